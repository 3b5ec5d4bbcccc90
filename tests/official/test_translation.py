"""Official-style RT-DETR(v2) configs (tests/official/configs, written for the tests) and PaddleDetection's own
Mask-RT-DETR configs (copies) load through ppdet_rtdetr.load_config into our modules: official layouts, official
defaults, readers, optimizer, clear errors; other configs and a ppdet that has the official modules are left alone."""
import os
import re
import textwrap

import pytest

from conftest import ROOT, build_from_config, fresh_config, model_layout, reference_layout

CONFIGS = os.path.join(ROOT, 'tests', 'official', 'configs')
V1_R18 = os.path.join(CONFIGS, 'rtdetr', 'rtdetr_r18vd_6x_coco.yml')
V1_TINY = os.path.join(CONFIGS, 'rtdetr', 'rtdetr_r18vd_tiny.yml')
V2_DSP = os.path.join(CONFIGS, 'rtdetrv2', 'rtdetrv2_r18vd_dsp_3x_coco.yml')
V2_TINY = os.path.join(CONFIGS, 'rtdetrv2', 'rtdetrv2_r18vd_dsp_tiny.yml')


@pytest.mark.parametrize('config, reference', [(V1_R18, 'rtdetr_r18vd_keys.txt'),
                                               (V2_DSP, 'rtdetrv2_r18vd_paddle_discrete_keys.txt')],
                         ids=['rtdetr_r18vd', 'rtdetrv2_r18vd_dsp'])
def test_official_config_builds_the_official_layout(config, reference):
    got, want = model_layout(build_from_config(config)), reference_layout(reference)
    assert got == want, (f'missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}, '
                         f'other shapes {[k for k in set(got) & set(want) if got[k] != want[k]][:5]}')


def test_official_defaults_hold_where_the_file_is_silent():
    # the tiny file sets neither learnt_init_query (official default True, ours False) nor a post-process
    # section (official top-k 100, ours 300), and names the encoder layer by its top-level section
    model = build_from_config(V1_TINY)
    assert model.transformer.tgt_embed.weight.shape == [30, 32]
    assert model.post_process.num_top_queries == 100
    layer = model.neck.encoder[0].layers[0]
    assert layer.linear1.weight.shape == [32, 64], 'TransformerLayer.dim_feedforward 64 not carried over'
    assert model.detr_head.loss.use_vfl and model.detr_head.loss.matcher.matcher_coeff['class'] == 2


def test_v2_options_reach_the_modules():
    model = build_from_config(V2_TINY)
    attn = model.transformer.decoder.layers[0].cross_attn
    assert attn.method == 'discrete' and attn.sampling_offsets.weight.stop_gradient, 'discrete sampling not set'
    # [4, 4, 4] from the official int default 4: RT-DETRv2 keeps the scale buffer in its state dict
    assert 'transformer.decoder.layers.0.cross_attn.num_points_scale' in model.state_dict()


def _reader_names(reader, epoch):
    reader.set_epoch(epoch)
    names = []
    for op in reader._ops:
        inner = op
        while hasattr(inner, 'transforms') and isinstance(inner.transforms, list):
            if getattr(inner, 'active', True) is False:
                break
            inner = inner.transforms[0]
        else:
            names.append(type(inner).__name__)
    return names


def test_transform_schedulers_run_each_transform_in_its_epochs():
    from ppdet.core.workspace import create
    fresh_config(V2_TINY)
    reader = create('RTDETRTrainReader')  # TrainReader delegates to it
    # RandomDistort [0, 3), Resize [1, 3) (two entries: both apply), BatchRandomResize [0, 2)
    want = {0: ['Decode', 'RandomDistort', 'RandomFlip', 'BatchRandomResize'],
            1: ['Decode', 'RandomDistort', 'RandomFlip', 'Resize', 'BatchRandomResize'],
            2: ['Decode', 'RandomDistort', 'RandomFlip', 'Resize'],
            3: ['Decode', 'RandomFlip']}
    for epoch, names in want.items():
        got = [n for n in _reader_names(reader, epoch) if n not in ('NormalizeImage', 'NormalizeBox', 'BboxXYXY2XYWH',
                                                                    'Permute')]
        assert got == names, f'epoch {epoch}: {got}'
    distort = reader._ops[1].transforms[0]
    assert type(distort).__name__ == 'RandomApply' and distort.prob == 0.8


def test_param_groups_select_parameters_as_paddledetection_does():
    from ppdet.core.workspace import create
    fresh_config(V2_TINY)
    model = create('RTDETRDetector')
    groups = create('RTDETROptimizerBuilder').group_params(model)
    got = {name: (lr, decay) for lr, decay, params in groups for name, _ in params}
    # the official rule, written out: a parameter goes to the first group one of whose regexes re.search-es
    # its name; Paddle multiplies the group's learning_rate with the parameter's own ParamAttr factor here
    official = [(['^(?=.*backbone)(?!.*norm).*$'], {'learning_rate': 0.1}),
                (['^(?=.*(?:neck|transformer))(?=.*(?:norm|bn)).*$', 'bias$'], {'weight_decay': 0.})]
    for name, param in model.named_parameters():
        if not param.trainable:
            continue
        lr, decay = 1.0, 0.0001
        for regexes, opts in official:
            if any(re.search(r, name) for r in regexes):
                lr, decay = opts.get('learning_rate', 1.0), opts.get('weight_decay', 0.0001)
                break
        lr *= param.optimize_attr['learning_rate']
        assert got[name][1] == decay and abs(got[name][0] - lr) < 1e-12, f'{name}: {got[name]} != {(lr, decay)}'
    assert len(got) == len([p for p in model.parameters() if p.trainable])


def _official(tmp_path, text, base=V1_TINY):
    path = tmp_path / 'custom.yml'
    path.write_text(f"_BASE_: ['{base}']\n" + textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize('text, message', [
    ('RTDETRTransformer: {cross_attn_sampling_method: discrete}\n',
     "RTDETRTransformer.cross_attn_sampling_method: option not supported by RTDETRDeformableTransformer"),
    ('DINOHead: {eval_idx: 2}\n', "DINOHead.eval_idx: 2 is not supported by RTDETRHead (only -1)"),
    ('DETR: {backbone: MyNet}\n', "DETR.backbone: 'MyNet' is neither an official RT-DETR backbone we translate"),
    ('DETR: {neck: MyEncoder}\n',
     "DETR.neck: 'MyEncoder': ppdet_rtdetr builds RT-DETR with HybridEncoder or MaskHybridEncoder here"),
    ('TransformerLayer: {normalize_before: true}\n',
     'TransformerLayer.normalize_before: True is not supported by TransformerLayer (only False)'),
    ('TrainReader: {sample_transforms: [{Decode: {}}, {RandomFlip: {prob: 0.5, axis: 1}}]}\n',
     "TrainReader.sample_transforms.RandomFlip: options ['axis'] are not supported by paddledet 2.6.0's RandomFlip"),
    ('OptimizerBuilder: {optimizer: {type: AdamW, param_groups: [{params: [norm], beta1: 0.8}]}}\n',
     'OptimizerBuilder.optimizer.param_groups[0].beta1: not supported by RTDETROptimizerBuilder'),
])
def test_what_cannot_be_carried_over_is_refused_naming_file_module_and_key(tmp_path, text, message):
    from ppdet_rtdetr.official import OfficialConfigError
    path = _official(tmp_path, text)
    with pytest.raises(OfficialConfigError) as err:
        fresh_config(path)
    assert str(err.value).startswith(f'{path}: {message}'), str(err.value)


def test_our_configs_and_other_detr_configs_are_not_translated(tmp_path):
    from ppdet.core import workspace
    tiny = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')
    ours = fresh_config(tiny)
    assert ours.architecture == 'RTDETRDetector' and ours['RTDETRResNet']['depth'] == 18
    assert ours['RTDETRDeformableTransformer']['num_queries'] == 20 and 'EpochWindow' not in str(ours['TrainReader'])
    # a DETR config of another transformer stays ppdet's own
    detr = tmp_path / 'detr.yml'
    detr.write_text('architecture: DETR\nDETR: {backbone: ResNet, transformer: DETRTransformer, detr_head: DETRHead}\n'
                    'ResNet: {depth: 50}\n')
    cfg = fresh_config(str(detr))
    assert cfg.architecture == 'DETR' and cfg['ResNet']['depth'] == 50
    assert isinstance(workspace.global_config['ResNet'], workspace.SchemaDict)


def test_ppdet_registry_entries_are_left_as_they_are():
    from ppdet.core import workspace
    fresh_config(V1_TINY)
    before = {k: (v, dict(v)) for k, v in workspace.global_config.items()
              if isinstance(v, workspace.SchemaDict) and not v.pymodule.__name__.startswith('ppdet_rtdetr')}
    cfg = fresh_config(V1_TINY)
    assert cfg.architecture == 'RTDETRDetector'
    for name in ('DETR', 'ResNet', 'DINOHead', 'DINOLoss', 'HungarianMatcher'):
        assert dict(workspace.global_config[name]) == before[name][1], f'{name} was changed'


def test_a_ppdet_with_its_own_rtdetr_builds_the_file_itself():
    # a newer PaddleDetection registers RTDETRTransformer: then its modules (not ours) build the config
    import ppdet_rtdetr
    from ppdet.core.workspace import global_config, register
    fresh_config(V1_TINY)
    register(type('RTDETRTransformer', (), {'__init__': lambda self: None, '__module__': __name__}))
    try:
        cfg = ppdet_rtdetr.load_config(V1_TINY)
        assert cfg.architecture == 'DETR' and cfg['RTDETRTransformer']['num_queries'] == 30
        assert cfg['DETR']['backbone'] == 'ResNet' and 'EpochWindow' not in str(cfg['TrainReader'])
    finally:
        del global_config['RTDETRTransformer']


def test_train_reader_override_reaches_the_translated_v2_reader():
    """An official v2 config's TrainReader becomes `!Delegate {to: RTDETRTrainReader}` after translation; the
    `-o TrainReader.batch_size=2` its users write sets the reader the Trainer builds."""
    from ppdet.core.workspace import create
    from ppdet_rtdetr.cli import ToolArgsParser, load_tool_config
    fresh_config(V2_TINY)
    args = ToolArgsParser().parse_args(['-c', V2_TINY, '-o', 'TrainReader.batch_size=2', 'TrainReader.shuffle=false'])
    cfg, _ = load_tool_config(args, mode='train')
    assert type(cfg['TrainReader']).__name__ == 'Delegate'
    reader = create('RTDETRTrainReader')
    assert (reader.batch_size, reader.shuffle) == (2, False)


MASK = os.path.join(CONFIGS, 'mask_rtdetr', 'mask_rtdetr_hgnetv2_{}_6x_coco.yml')


@pytest.mark.parametrize('size', ['s', 'm', 'l', 'x', 'h'])
def test_official_mask_rtdetr_configs_build_the_official_layouts(size):
    """PaddleDetection's own configs/mask_rtdetr files (unchanged copies) build our modules with the official
    checkpoints' names and shapes."""
    import paddle
    from ppdet.core.workspace import create
    cfg = fresh_config(MASK.format(size))
    with paddle.LazyGuard():
        model = create(cfg.architecture)
    got, want = model_layout(model), reference_layout(f'mask_rtdetr_hgnetv2_{size}_keys.txt')
    assert got == want, (f'missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}, '
                         f'other shapes {[k for k in set(got) & set(want) if got[k] != want[k]][:5]}')
    assert cfg.architecture == 'RTDETRDetector' and model.with_mask
    assert type(model.post_process).__name__ == 'RTDETRMaskPostProcess' and model.post_process.num_top_queries == 100
    assert model.post_process.mask_stride == 4 and model.post_process.bbox_decode_type == 'origin'
    # the official MaskRTDETR defaults where the file is silent; its own options
    t = model.transformer
    assert (t.label_noise_ratio, t.box_noise_scale, t.mask_enhanced, t.num_denoising) == (0.5, 1.0, True, 100)
    assert cfg['RTDETRMaskCriterion']['vfl_iou_type'] == 'mask'
    assert cfg['RTDETRHungarianMatcher']['matcher_coeff'] == {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}
    assert cfg['with_mask'] is True and 'Poly2Mask' in str(cfg['TrainReader']['sample_transforms'])


def test_official_mask_rtdetr_s_options_reach_the_encoder():
    model = build_from_config(MASK.format('s'), pretrain_weights='')
    neck = model.neck
    # use_encoder_idx [2] of the four backbone levels is AIFI on stride 16; 128 prototypes; mask channels [64, 32]
    assert neck.use_encoder_idx == [1] and neck.feat_strides == [8, 16, 32]
    assert neck.enc_mask_output[1].weight.shape == [128, 32, 1, 1]
    assert model.transformer.mask_query_head.layers[-1].weight.shape == [256, 128]


def test_mask_modules_without_with_mask_are_refused(tmp_path):
    from ppdet_rtdetr.official import OfficialConfigError
    path = _official(tmp_path, 'with_mask: false\n', base=MASK.format('s'))
    with pytest.raises(OfficialConfigError) as err:
        fresh_config(path)
    assert str(err.value).startswith(f"{path}: DETR.neck: 'MaskHybridEncoder' with with_mask: False"), str(err.value)
