"""The RT-DETR optimizer recipe as ppdet's Trainer builds it from the tiny config, read back from the objects.

The tiny config inherits ``rtdetr/_base_/optimizer_6x.yml`` (AdamW, weight decay 1e-4, global-norm clip
0.1, linear warm-up) and overrides the schedule to base_lr 4e-4 with a 5-step warm-up from 0.1x; the
EMA settings come from ``rtdetr/_base_/rtdetr_r50vd.yml`` once ``use_ema`` is switched on.
"""
import math
import types

import numpy as np
import paddle
import pytest

from conftest import fresh_config
from helpers.workflow_helpers import TINY_CFG, make_shapes

BASE_LR, START_FACTOR, WARMUP_STEPS = 4e-4, 0.1, 5  # configs/tests/rtdetr_tiny.yml
BACKBONE_LR_MULT = 0.1  # RTDETRResNet.lr_mult_list of res2..res5; the stem keeps 1.0
STEPS = 2


@pytest.fixture(scope='module')
def trainer(tmp_path_factory):
    from ppdet.engine import Trainer

    from ppdet_rtdetr.device import resolve_device

    data = make_shapes(str(tmp_path_factory.mktemp('optimizer_data')), num_train=4, num_val=1)
    cfg = fresh_config(TINY_CFG, use_ema=True,
                       TrainDataset={'dataset_dir': data, 'image_dir': 'images/train',
                                     'anno_path': 'annotations/instances_train.json'})
    resolve_device(cfg)
    paddle.seed(0)
    return Trainer(cfg, mode='train')


def _snapshot(state):
    return {name: np.array(value.numpy()) for name, value in state.items()}


@pytest.fixture(scope='module')
def stepped(trainer):
    """Two training steps as Trainer.train runs them (forward, backward, step, lr step, EMA update).

    Returns the raw weights before and after each step, the EMA weights after each update, and the
    learning rate of each step.
    """
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    batch = next(iter(trainer.loader))
    raw, ema, lrs = [_snapshot(model.state_dict())], [], []
    for _ in range(STEPS):
        model(batch)['loss'].backward()
        optimizer.step()
        lrs.append(optimizer.get_lr())
        trainer.lr.step()
        optimizer.clear_grad()
        trainer.ema.update()
        raw.append(_snapshot(model.state_dict()))
        ema.append(_snapshot(trainer.ema.apply()))
    return types.SimpleNamespace(raw=raw, ema=ema, lrs=lrs)


def test_adamw_with_weight_decay_and_global_norm_clip(trainer):
    optimizer = trainer.optimizer
    assert isinstance(optimizer, paddle.optimizer.AdamW), type(optimizer)
    assert optimizer._weight_decay == pytest.approx(1e-4), 'AdamW decoupled weight decay'
    assert isinstance(optimizer._grad_clip, paddle.nn.ClipGradByGlobalNorm), type(optimizer._grad_clip)
    assert optimizer._grad_clip.clip_norm == pytest.approx(0.1)
    trainable = [p for p in trainer.model.parameters() if p.trainable]
    assert len(optimizer._parameter_list) == len(trainable), 'the optimizer must own every trainable parameter'


def test_linear_warmup_then_base_lr(trainer):
    schedule = trainer.optimizer._learning_rate
    assert schedule is trainer.lr, 'the Trainer steps the scheduler the optimizer reads'
    saved = schedule.state_dict()
    try:
        schedule.set_state_dict({'last_epoch': 0, 'last_lr': schedule.values[0]})
        values = []
        for _ in range(WARMUP_STEPS + 3):
            values.append(schedule())
            schedule.step()
    finally:
        schedule.set_state_dict(saved)
    expected = [BASE_LR * (START_FACTOR + (1 - START_FACTOR) * min(step / WARMUP_STEPS, 1.))
                for step in range(WARMUP_STEPS + 3)]
    np.testing.assert_allclose(values, expected, rtol=1e-9, err_msg='warm-up from base_lr * start_factor')
    assert values[0] == pytest.approx(BASE_LR * START_FACTOR) and values[-1] == pytest.approx(BASE_LR)


def test_backbone_stages_carry_the_lr_multiplier(trainer):
    params = [(name, p) for name, p in trainer.model.named_parameters() if p.trainable]
    stages = [(name, p) for name, p in params if name.startswith(('backbone.res2', 'backbone.res3',
                                                                  'backbone.res4', 'backbone.res5'))]
    assert stages, 'no parameter in backbone.res2..res5'
    wrong = [(name, p.optimize_attr['learning_rate']) for name, p in stages
             if p.optimize_attr['learning_rate'] != BACKBONE_LR_MULT]
    assert not wrong, 'backbone stage parameters without lr multiplier {}: {}'.format(BACKBONE_LR_MULT, wrong)
    stem = [p.optimize_attr['learning_rate'] for name, p in params if name.startswith('backbone.conv1')]
    assert stem and set(stem) == {1.0}, 'the stem keeps lr 1.0 (RTDETRResNet docstring), got {}'.format(set(stem))


def test_the_optimizer_applies_the_lr_multiplier(trainer, stepped):
    """Adam's first step moves each weight by about lr * g / |g|, i.e. by the parameter's own learning rate."""
    lr0 = stepped.lrs[0]
    assert lr0 == pytest.approx(BASE_LR * START_FACTOR)

    def median_step(prefix):
        moves = [np.abs(stepped.raw[1][name] - stepped.raw[0][name]).ravel()
                 for name, p in trainer.model.named_parameters() if p.trainable and name.startswith(prefix)]
        return float(np.median(np.concatenate(moves))) / lr0

    backbone, stem, neck = median_step('backbone.res'), median_step('backbone.conv1'), median_step('neck.')
    assert backbone == pytest.approx(BACKBONE_LR_MULT, rel=0.05), 'res2..res5 moved {:.3f} x lr'.format(backbone)
    assert stem == pytest.approx(1., rel=0.05) and neck == pytest.approx(1., rel=0.05), \
        'stem / encoder moved {:.3f} / {:.3f} x lr'.format(stem, neck)


def test_ema_exists_with_the_configured_decay(trainer):
    assert trainer.use_ema and trainer.ema is not None
    assert trainer.ema.decay == pytest.approx(trainer.cfg.ema_decay) == pytest.approx(0.9999)
    assert trainer.ema.ema_decay_type == 'exponential'


def test_ema_weights_follow_the_training_weights(trainer, stepped):
    """ppdet's 'exponential' EMA: ema_k = d_k * ema_(k-1) + (1 - d_k) * raw_k, d_k = decay * (1 - exp(-k / 2000))."""
    names = [name for name, p in trainer.model.named_parameters() if p.trainable]
    decays = [trainer.ema.decay * (1 - math.exp(-k / 2000.)) for k in range(1, STEPS + 1)]
    previous = {name: np.zeros_like(value) for name, value in stepped.raw[0].items()}
    for k in range(STEPS):
        raw, ema = stepped.raw[k + 1], stepped.ema[k]
        for name in names:
            expected = decays[k] * previous[name] + (1 - decays[k]) * raw[name]
            np.testing.assert_allclose(ema[name], expected, rtol=1e-5, atol=1e-8,
                                       err_msg='EMA of {} after update {}'.format(name, k + 1))
        previous = ema
    changed = [name for name in names if not np.array_equal(stepped.ema[0][name], stepped.ema[1][name])]
    assert len(changed) > 0.9 * len(names), 'EMA weights did not move with the second step'
    differs = [name for name in names if not np.array_equal(stepped.ema[1][name], stepped.raw[2][name])]
    assert len(differs) > 0.9 * len(names), 'EMA weights equal the raw ones: no averaging'
