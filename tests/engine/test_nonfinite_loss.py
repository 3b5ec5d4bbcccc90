"""A non-finite loss stops training with the step and the loss parts before anything is saved; the AMP
clamp keeps float16 decoder activations finite."""
import math

import numpy as np
import paddle
import pytest

from helpers.data_cases import checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine.loss_guard import NonFiniteLossError
from ppdet_rtdetr.modeling import decoder


@pytest.fixture(scope='module')
def shapes8(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('shapes8'), num_train=8, num_val=1)


def _nan_at_call(model, call, part='loss_bbox'):
    """From the `call`-th training forward on, `part` is NaN and every other loss part 0.5 (so the message
    is known); returns the list of part names of the poisoned output."""
    forward, calls, names = model._forward, [0], []

    def poisoned():
        losses = forward()
        calls[0] += 1
        if calls[0] < call:
            return losses
        names[:] = list(losses)
        # `* 0 +` keeps each part in the graph, as a real NaN would be
        return {k: v * 0 + (math.nan if k == part else 0.5) for k, v in losses.items()}

    model._forward = poisoned
    return names


def test_nan_loss_at_step_3_stops_before_the_optimizer_step_and_any_save(tmp_path, shapes8):
    from ppdet.engine import Trainer
    save_dir = tmp_path / 'out'
    cfg = light_config(save_dir, shapes8, train={'allow_empty': True}, epoch=2)
    trainer = Trainer(cfg, mode='train')
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
    from ppdet.engine import Trainer
    cfg = light_config(tmp_path / 'out', shapes8, train={'sample_num': 2}, epoch=1, stop_on_nonfinite_loss=False)
    trainer = Trainer(cfg, mode='train')
    _nan_at_call(trainer.model, call=1)
    trainer.train()  # ppdet's behaviour: the NaN step is taken and the epoch is saved
    assert checkpoint_files(tmp_path / 'out') == ['rtdetr_tiny/model_final.pdopt', 'rtdetr_tiny/model_final.pdparams']


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
