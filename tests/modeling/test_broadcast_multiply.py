"""broadcast_multiply (ppdet_rtdetr/modeling/layers.py): in CPU dygraph it tiles the factor before multiplying
(Paddle's CPU kernels broadcast leading / middle axes slowly); values and gradients must stay those of the plain
broadcast product, and a static graph (export) must keep the broadcast."""
import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.layers import broadcast_multiply


@pytest.mark.parametrize('x_shape, f_shape', [
    ([2, 50, 16], [1, 50, 1]),          # the encoder memory and its anchor mask
    ([6, 8, 12, 30], [6, 1, 12, 30]),   # sampled points and their attention weights
    ([3, 5], [3, 5]),                   # nothing to broadcast
])
def test_values_and_gradients_equal_the_broadcast_product(x_shape, f_shape):
    rng = np.random.RandomState(0)
    x_np = rng.randn(*x_shape).astype('float32')
    f_np = rng.randn(*f_shape).astype('float32')
    dy = paddle.to_tensor(rng.randn(*x_shape).astype('float32'))
    results = []
    for fn in (lambda x, f: x * f, broadcast_multiply):
        x, f = paddle.to_tensor(x_np), paddle.to_tensor(f_np)
        x.stop_gradient = f.stop_gradient = False
        out = fn(x, f)
        results.append([out.numpy()] + [g.numpy() for g in paddle.grad([out], [x, f], [dy])])
    (want_out, want_dx, want_df), (got_out, got_dx, got_df) = results
    np.testing.assert_array_equal(got_out, want_out)
    np.testing.assert_array_equal(got_dx, want_dx)
    np.testing.assert_allclose(got_df, want_df, rtol=1e-6, atol=1e-6)


def test_static_graph_keeps_the_broadcast():
    paddle.enable_static()
    try:
        main = paddle.static.Program()
        with paddle.static.program_guard(main, paddle.static.Program()):
            x = paddle.static.data('x', [-1, 50, 16], 'float32')
            f = paddle.static.data('f', [1, 50, 1], 'float32')
            broadcast_multiply(x, f)
        names = [op.name() for op in main.global_block().ops]
    finally:
        paddle.disable_static()
    assert 'pd_op.multiply' in names and not any('tile' in n for n in names), names
