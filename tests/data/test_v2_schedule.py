"""RT-DETRv2 training recipe as config: the stop-epoch reader schedule and the optimizer's parameter groups."""
import os
import re

import numpy as np
import paddle
import pytest

from conftest import ROOT, TINY_CFG, build_from_config, fresh_config

V2 = os.path.join(ROOT, 'configs', 'rtdetrv2')
STRONG = ['RandomDistort', 'RandomExpand', 'RandomCrop']
MULTI_SCALE = ['BatchRandomResize']
SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]

# leaf: (epochs, stop_epoch, multi-scale before stop_epoch), from the official recipes
SCHEDULES = {
    'rtdetrv2_r18vd_120e_coco.yml': (120, 117, False),
    'rtdetrv2_r34vd_120e_coco.yml': (120, 117, True),
    'rtdetrv2_r50vd_m_7x_coco.yml': (84, 81, True),
    'rtdetrv2_r50vd_6x_coco.yml': (72, 71, True),
    'rtdetrv2_r101vd_6x_coco.yml': (72, 71, True),
    'rtdetrv2_r18vd_dsp_3x_coco.yml': (36, 33, False),
    'rtdetrv2_r34vd_dsp_1x_coco.yml': (12, 10, True),
    'rtdetrv2_r50vd_dsp_1x_coco.yml': (12, 10, True),
    'rtdetrv2_r50vd_m_dsp_3x_coco.yml': (36, 33, True),
}


def test_every_v2_leaf_has_a_schedule_here():
    leaves = {f for f in os.listdir(V2) if f.endswith('.yml')}
    assert leaves == set(SCHEDULES), f'configs without an expected schedule: {sorted(leaves ^ set(SCHEDULES))}'


@pytest.mark.parametrize('leaf', sorted(SCHEDULES))
def test_reader_schedule_before_and_after_stop_epoch(leaf):
    from ppdet.core.workspace import create
    epochs, stop, multi_scale = SCHEDULES[leaf]
    cfg = fresh_config(os.path.join(V2, leaf))
    assert cfg.epoch == epochs
    reader = create('RTDETRTrainReader')
    assert reader.stop_epoch == stop
    after = ['Decode', 'RandomFlip', 'Resize', 'NormalizeImage', 'NormalizeBox', 'BboxXYXY2XYWH', 'Permute']
    before = ['Decode'] + STRONG + after[1:3] + (MULTI_SCALE if multi_scale else []) + after[3:]
    assert reader.transform_names(0) == before
    assert reader.transform_names(stop - 1) == before
    assert reader.transform_names(stop) == after
    assert reader.transform_names(epochs - 1) == after


@pytest.fixture(scope='module')
def shapes_dataset(tmp_path_factory):
    from ppdet_rtdetr.data import synthetic
    root = str(tmp_path_factory.mktemp('shapes'))
    synthetic.make_dataset(root, num_train=4, num_val=1, size=96, seed=0)
    return root


def _coco(root):
    from ppdet.data.source.coco import COCODataSet
    return COCODataSet(dataset_dir=root, image_dir='images/train', anno_path='annotations/instances_train.json',
                       data_fields=['image', 'gt_bbox', 'gt_class', 'is_crowd'])


def _epoch_shapes(loader, epochs):
    """{epoch: set of image batch shapes}, driving the loader as ppdet's Trainer.train does."""
    shapes = {}
    for epoch in epochs:
        loader.dataset.set_epoch(epoch)
        shapes[epoch] = {tuple(batch['image'].shape) for batch in loader}
    return shapes


@pytest.mark.parametrize('worker_num', [0, 1])
def test_gates_switch_at_stop_epoch_in_worker_processes(shapes_dataset, worker_num):
    """ppdet's loader starts the next epoch's workers before Trainer.set_epoch: they must still see the new epoch."""
    from ppdet_rtdetr.data.stop_epoch import RTDETRTrainReader
    small = {'BatchRandomResize': {'target_size': [[32, 48]], 'random_size': True, 'random_interp': False,
                                   'keep_ratio': False}}
    reader = RTDETRTrainReader(
        sample_transforms=[{'Decode': {}}, {'Resize': {'target_size': [64, 96], 'keep_ratio': False, 'interp': 1}}],
        batch_transforms=[{'BeforeStopEpoch': {'transforms': [small]}}, {'Permute': {}}],
        batch_size=2, shuffle=False, drop_last=True, collate_batch=False, stop_epoch=2)
    loader = reader(_coco(shapes_dataset), worker_num)
    got = _epoch_shapes(loader, range(4))
    assert got == {0: {(2, 3, 32, 48)}, 1: {(2, 3, 32, 48)}, 2: {(2, 3, 64, 96)}, 3: {(2, 3, 64, 96)}}


def test_trainer_builds_the_v2_reader_through_train_reader(shapes_dataset):
    """`create('TrainReader')`, as the Trainer calls it: multi-scale before stop_epoch, 640x640 from it on."""
    from ppdet.core.workspace import create
    from ppdet_rtdetr.data.stop_epoch import RTDETRTrainReader
    cfg = fresh_config(os.path.join(V2, 'rtdetrv2_r50vd_6x_coco.yml'),
                       RTDETRTrainReader={'batch_size': 2, 'stop_epoch': 2})
    assert cfg['TrainReader']['batch_size'] == 2  # ppdet's LogPrinter reads it there
    loader = create('TrainReader')(_coco(shapes_dataset), 0)
    assert isinstance(loader, RTDETRTrainReader)
    got = _epoch_shapes(loader, [0, 1, 2])
    for epoch in (0, 1):
        assert got[epoch] <= {(2, 3, s, s) for s in SCALES}, got
    assert got[2] == {(2, 3, 640, 640)}


# Expected per-parameter settings, written from parameter names (not layer types, as the builder uses).
_NORM_NAME = re.compile(r'(norm\d?\.|\.bn\.|^neck\.input_proj\.\d\.1\.|^transformer\.enc_output\.1\.)')
_RES_STAGE = re.compile(r'^backbone\.res\d')
# leaf: (backbone lr_mult, does it apply to backbone norms, zero decay on neck/transformer biases)
RECIPES = {
    'rtdetrv2_r18vd_120e_coco.yml': (1.0, False, False),
    'rtdetrv2_r34vd_120e_coco.yml': (0.5, True, True),
    'rtdetrv2_r50vd_6x_coco.yml': (0.1, False, False),
    'rtdetrv2_r101vd_6x_coco.yml': (0.01, False, False),
}


def _expected(name, recipe):
    backbone_mult, mult_norms, bias_no_decay = recipe
    is_norm = bool(_NORM_NAME.search(name))
    # the tiny model's own ParamAttr factors: res2..res5 at 0.1 (lr_mult_list), sampling offsets at 0.1
    lr = 0.1 if _RES_STAGE.match(name) or 'sampling_offsets' in name else 1.0
    if name.startswith('backbone.') and (mult_norms or not is_norm):
        lr *= backbone_mult
    no_decay = is_norm or (bias_no_decay and re.match(r'^(neck|transformer)\..*bias$', name))
    return lr, 0. if no_decay else 1e-4


@pytest.mark.parametrize('leaf', sorted(RECIPES))
def test_param_groups_take_effect_in_an_adamw_step(leaf):
    """One AdamW step from all-ones weights with gradient 1 gives 1 - lr * (1 + weight_decay) per parameter.

    The gradient clip is checked, then switched off: clipped gradients are small enough for Adam's epsilon
    to blur the 1e-4 weight decay.
    """
    from ppdet.core.workspace import create
    model = build_from_config(TINY_CFG)
    fresh_config(os.path.join(V2, leaf))
    base_lr = 0.5
    assert create('OptimizerBuilder')(base_lr, model)._grad_clip.clip_norm == 0.1
    # a second build over the same model (Paddle wrote the first one's group rates into the parameters)
    fresh_config(os.path.join(V2, leaf), RTDETROptimizerBuilder={'clip_grad_by_norm': None})
    opt = create('OptimizerBuilder')(base_lr, model)
    params = [(n, p) for n, p in model.named_parameters() if p.trainable]
    assert sum(len(g['params']) for g in opt._param_groups) == len(params)
    with paddle.no_grad():
        for _, p in params:
            p.set_value(paddle.ones_like(p))
    paddle.add_n([p.sum() for _, p in params]).backward()
    opt.step()
    wrong = []
    for name, p in params:
        lr, decay = _expected(name, RECIPES[leaf])
        want = 1 - base_lr * lr * (1 + decay)
        err = float(np.abs(p.numpy() - want).max())
        if err > 1e-6:
            wrong.append((name, f'want lr {lr} wd {decay}: {want}, got {float(p.numpy().flat[0])} (max err {err:.2e})'))
    assert not wrong, f'{len(wrong)} parameters with a wrong update, e.g. {wrong[:4]}'


def _groups(optimizer):
    return [(g['learning_rate'], g['weight_decay'], [p.name for p in g['params']]) for g in optimizer._param_groups]


def test_building_twice_gives_the_same_groups():
    from ppdet.core.workspace import create
    model = build_from_config(TINY_CFG)
    # r34's recipe multiplies the backbone (already at 0.1 in res2..res5) by 0.5, norms included
    fresh_config(os.path.join(V2, 'rtdetrv2_r34vd_120e_coco.yml'))
    first = _groups(create('OptimizerBuilder')(1e-4, model))
    factors = {n: p.optimize_attr['learning_rate'] for n, p in model.named_parameters()}
    second = _groups(create('OptimizerBuilder')(1e-4, model))
    assert second == first, f'rebuilt groups {[g[:2] for g in second]}, first {[g[:2] for g in first]}'
    assert {n: p.optimize_attr['learning_rate'] for n, p in model.named_parameters()} == factors
    assert factors['backbone.res2.res2a.branch2a.conv.weight'] == pytest.approx(0.1 * 0.5)
    # another recipe afterwards starts from the parameters' own factors, not from r34's products
    fresh_config(os.path.join(V2, 'rtdetrv2_r101vd_6x_coco.yml'))
    create('OptimizerBuilder')(1e-4, model)
    factors = {n: p.optimize_attr['learning_rate'] for n, p in model.named_parameters()}
    assert factors['backbone.res2.res2a.branch2a.conv.weight'] == pytest.approx(0.1 * 0.01)
    assert factors['backbone.conv1.conv1_1.conv.weight'] == pytest.approx(0.01)
    # a factor set by hand since is the new own factor
    param = dict(model.named_parameters())['neck.input_proj.0.0.weight']
    param.optimize_attr['learning_rate'] = 0.3
    create('OptimizerBuilder')(1e-4, model)
    assert param.optimize_attr['learning_rate'] == pytest.approx(0.3)


def test_unknown_param_group_key_is_an_error():
    from ppdet_rtdetr.optim import RTDETROptimizerBuilder
    with pytest.raises(ValueError, match=r"param_groups.backbone: unknown keys \['lr'\]"):
        RTDETROptimizerBuilder(param_groups={'backbone': {'params': 'backbone', 'lr': 1e-5}})


def _small_reader():
    from ppdet_rtdetr.data.stop_epoch import RTDETRTrainReader
    return RTDETRTrainReader(sample_transforms=[{'Decode': {}}], batch_transforms=[{'Permute': {}}],
                             batch_size=1, collate_batch=False, stop_epoch=1)


def test_a_missing_private_ppdet_attribute_is_named_with_the_ppdet_version(monkeypatch):
    import ppdet
    from ppdet.data.reader import Compose
    monkeypatch.setattr(ppdet, '__version__', '2.9.0')
    # a dataset class of a ppdet that no longer keeps the epoch in `_epoch`
    with pytest.raises(RuntimeError, match=r"private attribute DetDataset\._epoch, written against ppdet 2\.6\.0, "
                                           r"but the installed ppdet 2\.9\.0 has no such attribute"):
        _small_reader()([], 0)
    # a Compose that names its transform list otherwise
    init = Compose.__init__

    def renamed(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.transforms_list = self.__dict__.pop('transforms_cls')

    monkeypatch.setattr(Compose, '__init__', renamed)
    with pytest.raises(RuntimeError, match=r'private attribute Compose\.transforms_cls, .* ppdet 2\.9\.0 has no'):
        _small_reader()
