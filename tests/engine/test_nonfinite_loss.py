"""RTDETRTrainer on a non-finite loss: without AMP it stops with the step and the loss parts before anything is
saved; under --amp it skips the step as the loss scaler does and stops after nonfinite_loss_patience in a row.
The AMP clamp keeps float16 decoder activations finite."""
import math
import re
import types

import numpy as np
import paddle
import pytest

from helpers.data_cases import LogRecords, checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine import RTDETRTrainer
from ppdet_rtdetr.engine.loss_guard import LossGuard, NonFiniteLossError, StepGate
from ppdet_rtdetr.modeling import decoder


@pytest.fixture(scope='module')
def shapes8(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('shapes8'), num_train=8, num_val=1)


def _nan_at_call(model, call, part='loss_bbox', calls_to_poison=None):
    """From the `call`-th training forward on (or at the 1-based calls in `calls_to_poison`), `part` is NaN
    and every other loss part 0.5 (so the message is known); returns the list of part names of the poisoned
    output. The NaN part is `value * nan`, so its gradients are NaN as a real overflow's are."""
    forward, calls, names = model._forward, [0], []

    def poisoned():
        losses = forward()
        calls[0] += 1
        if (calls[0] not in calls_to_poison) if calls_to_poison else (calls[0] < call):
            return losses
        names[:] = list(losses)
        # `* 0 +` keeps each part in the graph, as a real NaN would be
        return {k: v * math.nan if k == part else v * 0 + 0.5 for k, v in losses.items()}

    model._forward = poisoned
    return names


def test_nan_loss_at_step_3_stops_before_the_optimizer_step_and_any_save(tmp_path, shapes8):
    save_dir = tmp_path / 'out'
    cfg = light_config(save_dir, shapes8, train={'allow_empty': True}, epoch=2)
    trainer = RTDETRTrainer(cfg, mode='train')
    assert len(trainer.loader) == 4  # 8 images, batch 2
    names = _nan_at_call(trainer.model, call=3)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()

    finite = ', '.join('{}=0.5'.format(k) for k in names if k != 'loss_bbox')
    assert str(error.value) == (
        'Non-finite loss nan at epoch 0, step 2/4 (iteration 3): non-finite parts: loss_bbox=nan; finite parts: '
        '{}. Training stopped before the optimizer step; no checkpoint was written for this epoch. Check the '
        'data (tools/check_dataset.py), lower the learning rate, or train without --amp.'.format(finite))
    assert len(names) == 12 and 'loss_class' in finite
    assert checkpoint_files(save_dir) == []
    for name, param in trainer.model.named_parameters():
        assert np.isfinite(param.numpy()).all(), '{} got a NaN update'.format(name)


def test_the_guard_can_be_turned_off(tmp_path, shapes8):
    cfg = light_config(tmp_path / 'out', shapes8, train={'sample_num': 2}, epoch=1, stop_on_nonfinite_loss=False)
    trainer = RTDETRTrainer(cfg, mode='train')
    _nan_at_call(trainer.model, call=1)
    trainer.train()  # ppdet's behaviour: the NaN step is taken and the epoch is saved
    assert checkpoint_files(tmp_path / 'out') == ['rtdetr_tiny/model_final.manifest.json', 'rtdetr_tiny/model_final.pdopt',
                                                  'rtdetr_tiny/model_final.pdparams']


def _adam_updates(optimizer):
    """How many updates AdamW applied: its beta1 power accumulators start at beta1 and gain a factor per update,
    whatever the gradients (read from the optimizer, not from our code)."""
    beta1 = optimizer._beta1
    powers = {round(float(v.numpy().reshape(-1)[0]), 10) for k, v in optimizer.state_dict().items()
              if 'beta1_pow' in k}
    assert len(powers) == 1, powers
    return round(math.log(powers.pop()) / math.log(beta1)) - 1


def test_amp_skips_nonfinite_steps_and_stops_after_patience_in_a_row(tmp_path, shapes8):
    """ppdet's --amp branch of Trainer.train as it runs on CPU: auto_cast and the GradScaler are off there
    (Paddle runs the scaler on GPU / XPU / custom devices only), so the step gate skips as the scaler would.
    Losses 2, 3 are NaN (skipped), 4 is finite (count reset), 5, 6, 7 are NaN: the third in a row stops."""
    cfg = light_config(tmp_path / 'out', shapes8, train={'allow_empty': True}, epoch=2, amp=True,
                       nonfinite_loss_patience=3)
    trainer = RTDETRTrainer(cfg, mode='train')
    assert trainer.use_amp and len(trainer.loader) == 4
    names = _nan_at_call(trainer.model, None, calls_to_poison={2, 3, 5, 6, 7})
    with LogRecords('ppdet_rtdetr.engine.loss_guard') as log, pytest.raises(NonFiniteLossError) as error:
        trainer.train()

    finite = ', '.join('{}=0.5'.format(k) for k in names if k != 'loss_bbox')
    skipped = [(1, 0, 1, 1), (2, 0, 2, 2), (0, 1, 4, 1), (1, 1, 5, 2)]  # (step, epoch, iteration - 1, in a row)
    assert log.messages == [('WARNING', 'Non-finite loss nan at epoch {}, step {}/4 (iteration {}): non-finite '
                                        'parts: loss_bbox=nan; finite parts: {}. Skipping this step as the AMP '
                                        'loss scaler does ({} of 3 in a row before training stops, '
                                        'nonfinite_loss_patience).'.format(e, s, i + 1, finite, n))
                            for s, e, i, n in skipped]
    assert str(error.value) == (
        'Non-finite loss nan at epoch 1, step 2/4 (iteration 7): non-finite parts: loss_bbox=nan; finite parts: '
        '{}. That is 3 non-finite steps in a row (nonfinite_loss_patience: 3): training stopped before the '
        'optimizer step; no checkpoint was written for this epoch. Check the data (tools/check_dataset.py), '
        'lower the learning rate, or train without --amp.'.format(finite))
    assert _adam_updates(trainer.optimizer) == 2, 'only steps 1 and 4 may update the weights'
    for name, param in trainer.model.named_parameters():
        assert np.isfinite(param.numpy()).all(), '{} got a NaN update'.format(name)
    assert checkpoint_files(tmp_path / 'out') == ['rtdetr_tiny/0.manifest.json', 'rtdetr_tiny/0.pdopt',
                                                  'rtdetr_tiny/0.pdparams']
    assert not {'step', 'minimize'} & set(vars(trainer.optimizer)), 'the step gate must be removed after train'


@pytest.mark.parametrize('patience', [0, 2.5, True, '3'])
def test_patience_must_be_a_positive_integer(patience):
    from conftest import TINY_CFG, fresh_config
    message = r"^nonfinite_loss_patience must be an integer >= 1, got {}$".format(re.escape(repr(patience)))
    with pytest.raises(ValueError, match=message):
        RTDETRTrainer(fresh_config(TINY_CFG, nonfinite_loss_patience=patience), mode='train')
    model = paddle.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=message):
        LossGuard(types.SimpleNamespace(model=model, status={}), patience=patience)
    assert not model._forward_post_hooks, 'a refused guard must not stay hooked'


def test_step_gate_skips_only_steps_with_nonfinite_gradients():
    layer = paddle.nn.Linear(2, 1)
    optimizer = paddle.optimizer.SGD(learning_rate=0.5, parameters=layer.parameters())
    gate = StepGate(optimizer, layer.parameters())
    before = layer.weight.numpy().copy()
    (layer(paddle.to_tensor([[1., 2.]])) * math.inf).sum().backward()
    assert optimizer.minimize(None) == (None, None) and optimizer.step() is None  # both skipped
    np.testing.assert_array_equal(layer.weight.numpy(), before)
    optimizer.clear_grad()
    layer(paddle.to_tensor([[1., 2.]])).sum().backward()  # d/dw = [1, 2]
    optimizer.step()
    np.testing.assert_allclose(layer.weight.numpy(), before - 0.5 * np.array([[1.], [2.]]), rtol=1e-6)
    assert gate.skipped == 2
    gate.remove()
    assert type(optimizer).step is paddle.optimizer.SGD.step and 'step' not in vars(optimizer)


@pytest.mark.parametrize('cfg, guards', [
    ({}, [('LossGuard', None)]),
    ({'amp': True, 'use_gpu': True}, [('LossGuard', 10)]),  # the enabled GradScaler skips the steps itself
    ({'amp': True, 'use_gpu': False, 'nonfinite_loss_patience': 4}, [('LossGuard', 4), ('StepGate', None)]),
    ({'amp': True, 'stop_on_nonfinite_loss': False}, []),
])
def test_the_guards_the_trainer_installs(cfg, guards):
    from ppdet.core.workspace import AttrDict
    trainer = RTDETRTrainer.__new__(RTDETRTrainer)
    trainer.cfg, trainer.use_amp, trainer.status = AttrDict(**cfg), cfg.get('amp', False), {}
    trainer.model = paddle.nn.Linear(2, 2)
    trainer.optimizer = paddle.optimizer.SGD(parameters=trainer.model.parameters())
    installed = trainer._nonfinite_guards()
    assert [(type(g).__name__, getattr(g, 'patience', None)) for g in installed] == guards
    for guard in installed:
        guard.remove()


def test_inf_loss_without_parts():
    from ppdet_rtdetr.engine.loss_guard import check_loss
    status = {'epoch_id': 5, 'step_id': 0, 'steps_per_epoch': 10}
    check_loss({'loss': paddle.to_tensor([1.0])}, status)  # finite: nothing happens
    with pytest.raises(NonFiniteLossError, match=r'^Non-finite loss inf at epoch 5, step 0/10 \(iteration 51\): '
                                                 r'non-finite parts: none; finite parts: none\. '):
        check_loss({'loss': paddle.to_tensor([math.inf])}, status)


def test_clamp_fp16_keeps_overflowing_float16_finite():
    # float16 tops out at 65504: 7e4 and 1e5 are already inf after the cast, as an overflowing fp16 op yields
    values = paddle.to_tensor([1e5, -1e5, 7e4, 65504., -3.5, 0.])
    half = values.astype('float16')
    assert np.isinf(half.astype('float32').numpy()).sum() == 3
    clamped = decoder.clamp_fp16(half)
    assert clamped.dtype == paddle.float16
    np.testing.assert_array_equal(clamped.astype('float32').numpy(), [65504., -65504., 65504., 65504., -3.5, 0.])


def test_clamp_fp16_leaves_float32_untouched():
    values = paddle.to_tensor([1e5, -1e30, 3.])
    assert decoder.clamp_fp16(values) is values


def test_decoder_layer_clamps_the_residuals_and_the_ffn(monkeypatch):
    """Where the clamp sits: after each residual sum (3) and on the FFN output (float32 here: no-ops)."""
    seen = []

    def spy(x):
        seen.append(x)
        return x

    monkeypatch.setattr(decoder, 'clamp_fp16', spy)
    layer = decoder.TransformerDecoderLayer(d_model=8, n_head=2, dim_feedforward=16, n_levels=1, n_points=2)
    layer.eval()
    tgt, memory = paddle.rand([1, 3, 8]), paddle.rand([1, 4 * 6, 8])
    out = layer(tgt, paddle.full([1, 3, 1, 4], 0.5), memory, [(4, 6)], query_pos_embed=paddle.zeros([1, 3, 8]))
    assert len(seen) == 4
    np.testing.assert_allclose(out.numpy(), layer.norm3(seen[3]).numpy(), rtol=1e-6)
    # [3] = norm2(residual [1]) + ffn [2]
    np.testing.assert_allclose(seen[3].numpy(), (layer.norm2(seen[1]) + seen[2]).numpy(), rtol=1e-6)
