"""Every config builds on CPU, and state-dict layouts equal the official checkpoints' (names and shapes)."""
import glob
import os

import pytest

from conftest import ROOT, build_from_config, fresh_config, model_layout, reference_layout

LEAVES = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.yml'), recursive=True)
                if '_base_' not in p and os.sep + 'datasets' + os.sep not in p and not p.endswith('runtime.yml'))


def _diff(got, want):
    missing = sorted(set(want) - set(got))[:5]
    unexpected = sorted(set(got) - set(want))[:5]
    shapes = [(k, got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]][:5]
    return f'missing {missing}, unexpected {unexpected}, shape mismatches {shapes}'


def _with_decoder_layers(layout, n):
    """The non-backbone part of a layout with n decoder layers, by copying layer / head 0."""
    out = {}
    for k, v in layout.items():
        for prefix in ('transformer.decoder.layers.', 'transformer.dec_score_head.', 'transformer.dec_bbox_head.'):
            if k.startswith(prefix):
                idx, rest = k[len(prefix):].split('.', 1)
                if idx == '0':
                    out.update({f'{prefix}{i}.{rest}': v for i in range(n)})
                break
        else:
            out[k] = v
    return out


def _part(layout, prefix, keep=True):
    return {k: v for k, v in layout.items() if k.startswith(prefix) == keep}


def test_every_config_is_found():
    names = {os.path.basename(p) for p in LEAVES}
    for want in ('rtdetr_r18vd_6x_coco.yml', 'rtdetr_r34vd_6x_coco.yml', 'rtdetr_r50vd_m_6x_coco.yml',
                 'rtdetr_r50vd_6x_coco.yml', 'rtdetr_r101vd_6x_coco.yml', 'rtdetr_tiny.yml',
                 'mask_rtdetr_hgnetv2_s_6x_coco.yml', 'mask_rtdetr_hgnetv2_h_6x_coco.yml', 'mask_rtdetr_tiny.yml'):
        assert want in names


def _build_layout_only(path):
    """(cfg, model) of a config, its parameters created lazily (shapes and names, no values: a 225M-parameter
    Swin-L builds in half a second) and its backbone's ImageNet download off (`pretrained: ''`)."""
    import paddle
    from ppdet.core.workspace import create
    cfg = fresh_config(path)
    backbone = cfg[cfg.architecture]['backbone']
    if 'pretrained' in cfg[backbone].schema:  # an option of the backbone class (set or not)
        cfg[backbone]['pretrained'] = ''
    with paddle.LazyGuard():
        return cfg, create(cfg.architecture)


@pytest.mark.parametrize('path', LEAVES, ids=[os.path.relpath(p, ROOT) for p in LEAVES])
def test_config_builds_on_cpu(path):
    cfg, model = _build_layout_only(path)
    assert cfg['architecture'] == 'RTDETRDetector', f'{path}: architecture {cfg["architecture"]}'
    # the config's values reach the modules that use them
    transformer = model.transformer
    dec = cfg[type(transformer).__name__]
    got = (transformer.num_classes, model.post_process.num_classes, transformer.hidden_dim,
           len(transformer.decoder.layers), transformer.num_queries)
    want = (cfg.num_classes, cfg.num_classes, cfg.hidden_dim, dec['num_decoder_layers'], dec['num_queries'])
    assert got == want, f'{path}: (num_classes x2, hidden_dim, decoder layers, queries) {got}, config {want}'
    score_head = transformer.score_head if model.with_mask else transformer.dec_score_head[0]
    assert tuple(score_head.weight.shape) == (cfg.hidden_dim, cfg.num_classes)
    assert model.with_mask == (type(transformer).__name__ == 'RTDETRMaskTransformer'), path


def test_no_config_sets_find_unused_parameters():
    # every rank builds the same graph by design (empty-GT batches keep every loss connected), so
    # Paddle's DataParallel needs no unused-parameter search (it costs a graph traversal per step)
    every_yml = glob.glob(os.path.join(ROOT, 'configs', '**', '*.yml'), recursive=True)
    setting = [os.path.relpath(p, ROOT) for p in every_yml if 'find_unused_parameters' in open(p).read()]
    assert len(every_yml) > len(LEAVES) and not setting, f'configs setting find_unused_parameters: {setting}'


@pytest.mark.parametrize('config, ref', [('rtdetr_r18vd_6x_coco.yml', 'rtdetr_r18vd_keys.txt'),
                                         ('rtdetr_r50vd_6x_coco.yml', 'rtdetr_r50vd_keys.txt'),
                                         ('rtdetr_hgnetv2_l_6x_coco.yml', 'rtdetr_hgnetv2_l_keys.txt'),
                                         ('rtdetr_hgnetv2_x_6x_coco.yml', 'rtdetr_hgnetv2_x_keys.txt')])
def test_official_layouts(config, ref):
    got = model_layout(build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', config)))
    want = reference_layout(ref)
    assert got == want, _diff(got, want)


@pytest.mark.parametrize('size', ['s', 'm', 'l', 'x', 'h'])
def test_mask_rtdetr_layouts(size):
    got = model_layout(_build_layout_only(os.path.join(ROOT, 'configs', 'mask_rtdetr',
                                                      f'mask_rtdetr_hgnetv2_{size}_6x_coco.yml'))[1])
    want = reference_layout(f'mask_rtdetr_hgnetv2_{size}_keys.txt')
    assert got == want, _diff(got, want)


def test_r34_layout_follows_the_naming_rules():
    from ppdet.modeling.backbones.resnet import ResNet
    got = model_layout(build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r34vd_6x_coco.yml')))
    backbone = {'backbone.' + k: tuple(v.shape) for k, v in
                ResNet(depth=34, variant='d', return_idx=[1, 2, 3], freeze_norm=False).state_dict().items()}
    want = dict(backbone, **_with_decoder_layers(_part(reference_layout('rtdetr_r18vd_keys.txt'), 'backbone.', False), 4))
    assert got == want, _diff(got, want)


def test_r50_m_layout_follows_the_naming_rules():
    got = model_layout(build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r50vd_m_6x_coco.yml')))
    r50, r18 = reference_layout('rtdetr_r50vd_keys.txt'), reference_layout('rtdetr_r18vd_keys.txt')
    # R50 backbone and 6-layer decoder; the expansion-0.5 encoder of R18 fed by R50's channels
    want = dict(_part(r50, 'neck.', False), **_part(_part(r18, 'neck.'), 'neck.input_proj', False),
                **_part(r50, 'neck.input_proj'))
    assert got == want, _diff(got, want)


def test_r101_layout_follows_the_naming_rules():
    from ppdet.modeling.backbones.resnet import ResNet
    got = model_layout(build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r101vd_6x_coco.yml')))
    backbone = {'backbone.' + k: tuple(v.shape) for k, v in
                ResNet(depth=101, variant='d', return_idx=[1, 2, 3]).state_dict().items()}
    assert _part(got, 'backbone.') == backbone, _diff(_part(got, 'backbone.'), backbone)
    assert 'backbone.res4.res4b22.branch2c.conv.weight' in got
    # encoder width 384 with FFN 2048; the decoder stays at 256 and projects 384 -> 256
    assert got['neck.input_proj.2.0.weight'] == (384, 2048, 1, 1)
    assert got['neck.encoder.0.layers.0.linear1.weight'] == (384, 2048)
    assert got['neck.fpn_blocks.0.conv1.conv.weight'] == (384, 768, 1, 1)
    assert got['transformer.input_proj.0.conv.weight'] == (256, 384, 1, 1)
    r50 = reference_layout('rtdetr_r50vd_keys.txt')
    assert set(_part(got, 'backbone.', False)) == set(_part(r50, 'backbone.', False))


def test_hgnetv2_h_layout_follows_the_naming_rules():
    got = model_layout(build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_hgnetv2_h_6x_coco.yml')))
    x = reference_layout('rtdetr_hgnetv2_x_keys.txt')
    # X's decoder; an encoder of width 512 with two AIFI layers
    assert _part(got, 'transformer.', True).keys() == _part(x, 'transformer.', True).keys()
    assert got['transformer.input_proj.0.conv.weight'] == (256, 512, 1, 1)
    assert got['neck.encoder.0.layers.1.linear1.weight'] == (512, 2048)
    assert [got[f'neck.input_proj.{i}.0.weight'][1] for i in range(3)] == [512, 1024, 2048]


@pytest.mark.parametrize('name', ['rtdetr_swin_L_384_3x_coco.yml', 'rtdetr_focalnet_L_384_3x_coco.yml'])
def test_large_backbone_configs_build_the_official_files_layout(name):
    """Our Swin-L / FocalNet-L configs and official-style files of the same models (tests/official/configs, in
    PaddleDetection's module names) build one layout, with the official backbone names and shapes."""
    got = model_layout(_build_layout_only(os.path.join(ROOT, 'configs', 'rtdetr', name))[1])
    want = model_layout(_build_layout_only(os.path.join(ROOT, 'tests', 'official', 'configs', 'rtdetr', name))[1])
    assert got == want, _diff(got, want)
    r50 = reference_layout('rtdetr_r50vd_keys.txt')
    # R50vd's decoder with FFN 2048 instead of 1024, and an encoder of six AIFI layers
    assert _part(got, 'transformer.') == {k: tuple(2048 if 'linear' in k and d == 1024 else d for d in v)
                                          for k, v in _part(r50, 'transformer.').items()}
    assert {f'neck.encoder.0.layers.{i}.linear1.weight' for i in range(6)} <= set(got)
    assert [got[f'backbone.norm{i}.weight'] for i in (1, 2, 3)] == [(384,), (768,), (1536,)]  # C = 192 * 2^i
    if 'swin' in name:  # window 12: a (2 * 12 - 1)^2 bias table per head (6 in stage 0)
        assert got['backbone.layers.0.blocks.0.attn.relative_position_bias_table'] == (529, 6)
        assert got['backbone.patch_embed.proj.weight'] == (192, 3, 4, 4)
    else:  # 4 focal levels: depthwise kernels 3, 5, 7, 9; f projects to 2 * 192 + 4 + 1
        assert got['backbone.layers.0.blocks.0.modulation.focal_layers.3.0.weight'] == (192, 1, 9, 9)
        assert got['backbone.layers.0.blocks.0.modulation.f.weight'] == (192, 389)
        assert got['backbone.patch_embed.proj.weight'] == (192, 3, 7, 7)


@pytest.mark.parametrize('config', ['rtdetr_cspresnet_l_6x_coco.yml', 'rtdetr_swin_t_6x_coco.yml'])
def test_other_ppdet_backbones_train_a_step(config):
    import numpy as np
    import paddle
    paddle.seed(0)
    model = build_from_config(os.path.join(ROOT, 'configs', 'rtdetr', config))
    model.train()
    # 160 x 192 gives 20*24 + 10*12 + 5*6 = 630 memory tokens >= 300 queries
    batch = {'image': paddle.rand([1, 3, 160, 192]), 'im_shape': paddle.to_tensor([[160., 192.]]),
             'scale_factor': paddle.to_tensor([[1., 1.]]),
             'gt_class': [paddle.to_tensor([[3]], dtype='int32')],
             'gt_bbox': [paddle.to_tensor([[0.5, 0.5, 0.3, 0.4]])]}
    losses = model(batch)
    assert np.isfinite(float(losses['loss'])), {k: float(v) for k, v in losses.items()}
    losses['loss'].backward()
    first = [p for p in model.backbone.parameters() if not p.stop_gradient][-1]
    assert first.grad is not None and float(first.grad.abs().sum()) > 0, 'no gradient reaches the backbone'


@pytest.mark.parametrize('overrides, message', [
    ({'use_focal_loss': False}, r'use_focal_loss=False \(softmax'),
    ({'RTDETRDeformableTransformer': {'query_select_method': 'best'}}, r"query_select_method 'best' is not one of"),
], ids=['softmax scores', 'query selection'])
def test_an_unsupported_option_in_a_config_refuses_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_from_config(os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml'), **overrides)
