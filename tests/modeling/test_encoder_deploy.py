"""RTDETRHybridEncoder.convert_to_deploy: the lateral map first in each top-down concat, with the fusion blocks'
input channels swapped to match, computes the same function (the 1x1 convs sum their inputs in another order, so
equal to float32 rounding)."""
import numpy as np
import paddle

from ppdet_rtdetr.modeling.hybrid_encoder import RTDETRHybridEncoder


def _encoder():
    paddle.seed(1)
    enc = RTDETRHybridEncoder(in_channels=[32, 48, 64], hidden_dim=32, expansion=0.5, eval_size=[128, 192],
                              encoder_layer={'nhead': 4, 'dim_feedforward': 64})
    enc.eval()
    return enc


def _feats():
    rng = np.random.default_rng(0)
    return [paddle.to_tensor(rng.normal(size=(2, c, h, w)).astype('float32'))
            for c, h, w in ((32, 16, 24), (48, 8, 12), (64, 4, 6))]


def _assert_same(got, want):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())


def test_deploy_form_computes_the_same_and_keeps_the_state_dict_layout():
    enc, feats = _encoder(), _feats()
    with paddle.no_grad():
        want = [o.numpy() for o in enc(feats)]
        before = {k: v.numpy().copy() for k, v in enc.state_dict().items()}
        enc.convert_to_deploy()
        got = [o.numpy() for o in enc(feats)]
    _assert_same(got, want)
    after = {k: v.numpy() for k, v in enc.state_dict().items()}
    assert list(after) == list(before) and all(after[k].shape == before[k].shape for k in before)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == [f'fpn_blocks.{i}.conv{j}.conv.weight' for i in range(2) for j in (1, 2)], changed
    w = before['fpn_blocks.0.conv1.conv.weight']  # [out, 2 * hidden, 1, 1]: [upsampled | lateral] before
    np.testing.assert_array_equal(after['fpn_blocks.0.conv1.conv.weight'], np.concatenate([w[:, 32:], w[:, :32]], 1))


def test_deploy_conversion_runs_once():
    enc, feats = _encoder(), _feats()
    with paddle.no_grad():
        enc.convert_to_deploy()
        once = {k: v.numpy().copy() for k, v in enc.state_dict().items()}
        enc.convert_to_deploy()
        want = [o.numpy() for o in _encoder()(feats)]
        got = [o.numpy() for o in enc(feats)]
    assert all(np.array_equal(once[k], v.numpy()) for k, v in enc.state_dict().items())
    _assert_same(got, want)
