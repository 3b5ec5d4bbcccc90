"""get_activation('silu'): silu in dygraph (the official kernel, bit-equal), swish in an exported graph (the
form Paddle Inference's oneDNN passes fuse into the convolution before it)."""
import numpy as np
import paddle
import paddle.nn.functional as F

from ppdet_rtdetr.modeling.layers import ConvBNAct, get_activation


def test_silu_is_the_official_kernel_in_dygraph():
    x = paddle.to_tensor(np.random.RandomState(0).randn(4096).astype('float32') * 8)
    np.testing.assert_array_equal(get_activation('silu')(x).numpy(), F.silu(x).numpy())
    np.testing.assert_array_equal(get_activation('swish')(x).numpy(), F.silu(x).numpy())


def test_exported_graph_has_swish_with_the_same_values():
    paddle.seed(0)
    layer = ConvBNAct(4, 6, 3, act='silu')
    layer.eval()
    x = paddle.to_tensor(np.random.RandomState(1).randn(1, 4, 9, 7).astype('float32'))
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([1, 4, 9, 7], 'float32')],
                                  full_graph=True)
    ops = [op.name() for op in static.forward.concrete_program.main_program.global_block().ops]
    assert 'pd_op.swish' in ops and not any('silu' in op for op in ops), ops
    np.testing.assert_allclose(static(x).numpy(), layer(x).numpy(), rtol=1e-6, atol=1e-6)
