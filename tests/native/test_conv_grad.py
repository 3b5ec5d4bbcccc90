"""oneDNN convolution gradients (ppdet_rtdetr/native/conv_grad.py): gradients equal Paddle's own conv2d
gradients up to float32 summation order, forward outputs bit-equal, only eligible layers switched, and
RTDETRTrainer switches a CPU training model unless ``cpu_conv_grad: paddle``."""
import collections

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from helpers.data_cases import LogRecords, light_config, make_shapes

from ppdet_rtdetr.engine import RTDETRTrainer
from ppdet_rtdetr.native import conv_grad
from ppdet_rtdetr.native import onednn as dnnl


def _paddle_grads(x, w, dy, stride, padding, dilation):
    x, w = x.detach(), w.detach()
    x.stop_gradient = w.stop_gradient = False
    y = F.conv2d(x, w, None, stride, padding, dilation)
    return paddle.grad([y], [x, w], [dy])


@pytest.mark.parametrize('x_shape, w_shape, stride, padding, dilation', [
    ([2, 8, 17, 23], [16, 8, 3, 3], [1, 1], [1, 1], [1, 1]),      # odd, non-square map
    ([1, 6, 20, 20], [5, 6, 3, 3], [2, 2], [1, 1], [1, 1]),       # stride 2 (the backbone's downsampling)
    ([3, 4, 15, 12], [7, 4, 5, 3], [1, 2], [2, 1], [1, 1]),       # non-square kernel and stride
    ([2, 4, 16, 16], [4, 4, 3, 3], [1, 1], [0, 0], [2, 2]),       # dilation, no padding
    ([1, 3, 19, 21], [8, 3, 7, 7], [2, 2], [1, 3, 2, 3], [1, 1]),  # four-sided padding, 7x7
])
def test_gradients_equal_paddles_conv2d_gradients(x_shape, w_shape, stride, padding, dilation):
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.randn(*x_shape).astype('float32'))
    w = paddle.to_tensor(rng.randn(*w_shape).astype('float32'))
    y = F.conv2d(x, w, None, stride, padding, dilation)
    dy = paddle.to_tensor(rng.randn(*y.shape).astype('float32'))
    primitives = conv_grad.ConvGradPrimitives(x_shape, w_shape, y.shape, stride, conv_grad._four_sided(padding),
                                              dilation)
    dx, dw = primitives(x, w, dy)
    want_dx, want_dw = _paddle_grads(x, w, dy, stride, padding, dilation)
    for name, got, want in (('dx', dx, want_dx), ('dw', dw, want_dw)):
        got, want = got.numpy(), want.numpy()
        assert got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 2e-6, '{}: relative error {:.2e}'.format(name, err)
    # a second call reuses the primitives and the workspace: same numbers
    again_dx, again_dw = primitives(x, w, dy)
    np.testing.assert_array_equal(again_dx.numpy(), dx.numpy())
    np.testing.assert_array_equal(again_dw.numpy(), dw.numpy())
    # only what is asked for
    only_dw = primitives(x, w, dy, need_dx=False)
    assert only_dw[0] is None
    np.testing.assert_array_equal(only_dw[1].numpy(), dw.numpy())


class _Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1)             # bias, input without gradient
        self.body = paddle.nn.Conv2D(8, 8, 3, padding=1, bias_attr=False)
        self.point = paddle.nn.Conv2D(8, 8, 1)                                  # 1x1: stays Paddle's
        self.depthwise = paddle.nn.Conv2D(8, 8, 3, padding=1, groups=8)         # groups: stays Paddle's
        self.reflect = paddle.nn.Conv2D(8, 8, 3, padding=1, padding_mode='reflect')  # stays Paddle's
        self.same = paddle.nn.Conv2D(8, 4, 3, padding='SAME')                   # stays Paddle's

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.body(x)) + self.point(x)
        return self.same(self.reflect(self.depthwise(x)))


def _run(net, x):
    out = net(x)
    (out * out).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in net.named_parameters()}
    net.clear_gradients()
    return out.numpy(), grads


def test_switched_model_keeps_forward_bits_and_gradients():
    paddle.seed(3)
    net = _Net()
    x = paddle.to_tensor(np.random.RandomState(1).rand(2, 3, 21, 18).astype('float32'))
    want_out, want_grads = _run(net, x)
    assert conv_grad.use_onednn_conv_grads(net) == 2
    switched = sorted(name for name, layer in net.named_sublayers() if 'forward' in vars(layer))
    assert switched == ['body', 'stem']
    got_out, got_grads = _run(net, x)
    np.testing.assert_array_equal(got_out, want_out)
    for name, want in want_grads.items():
        err = np.abs(got_grads[name] - want).max() / np.abs(want).max()
        assert err < 2e-6, '{}: relative error {:.2e}'.format(name, err)
    # another dtype runs the layer's own forward
    net.body.to(dtype='float64')
    x64 = paddle.to_tensor(np.random.RandomState(2).rand(1, 8, 5, 5))
    np.testing.assert_array_equal(net.body(x64).numpy(), F.conv2d(x64, net.body.weight, padding=1).numpy())


def test_a_geometry_onednn_refuses_gets_paddles_gradients(monkeypatch):
    def refuse(*args, **kwargs):
        raise dnnl.DnnlError('oneDNN dnnl_convolution_forward_primitive_desc_create returned unimplemented')

    paddle.seed(4)
    layer = paddle.nn.Conv2D(3, 5, 3, stride=2, padding=[1, 0])
    x = paddle.to_tensor(np.random.RandomState(5).rand(2, 3, 9, 11).astype('float32'))
    x.stop_gradient = False
    (layer(x) ** 2).sum().backward()
    want = [x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]
    x.clear_gradient()
    layer.clear_gradients()
    assert conv_grad.use_onednn_conv_grads(layer) == 1  # its self-check geometry passes
    monkeypatch.setattr(conv_grad, 'ConvGradPrimitives', refuse)  # ... the training geometry does not
    monkeypatch.setattr(conv_grad, '_PRIMITIVES', collections.OrderedDict())
    with LogRecords('ppdet_rtdetr.native.conv_grad') as logs:
        (layer(x) ** 2).sum().backward()
        (layer(x) ** 2).sum().backward()  # the refusal is remembered: one warning
    got = [x.grad.numpy() / 2, layer.weight.grad.numpy() / 2, layer.bias.grad.numpy() / 2]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert logs.messages == [('WARNING', "convolution x [2, 3, 9, 11] weight [5, 3, 3, 3] stride [2, 2] padding "
                                         "[1, 1, 0, 0] dilation [1, 1]: oneDNN "
                                         "dnnl_convolution_forward_primitive_desc_create returned unimplemented; "
                                         "its gradients use Paddle's kernels")]


def test_self_check_mismatch_keeps_paddles_kernels(monkeypatch):
    real_call = conv_grad.ConvGradPrimitives.__call__

    def wrong_weight_gradient(self, *args, **kwargs):
        dx, dw = real_call(self, *args, **kwargs)
        return dx, dw * 1.01  # as a oneDNN build with another meaning of a constant might compute

    monkeypatch.setattr(conv_grad.ConvGradPrimitives, '__call__', wrong_weight_gradient)
    net = _Net()
    with LogRecords('ppdet_rtdetr.native.conv_grad') as logs:
        assert conv_grad.use_onednn_conv_grads(net) == 0
    assert 'forward' not in vars(net.stem) and 'forward' not in vars(net.body), 'a layer was switched'
    (level, message), = logs.messages
    assert level == 'WARNING' and message.startswith(
        'oneDNN convolution gradients failed their self-check on stem (Conv2D): weight gradient differs from '
        "Paddle's by 0.01"), message
    assert message.endswith("training keeps Paddle's kernels"), message


def test_self_check_error_keeps_paddles_kernels(monkeypatch):
    def refuse(*args, **kwargs):
        raise dnnl.DnnlError('oneDNN dnnl_convolution_backward_data_primitive_desc_create returned unimplemented')

    monkeypatch.setattr(conv_grad, 'ConvGradPrimitives', refuse)
    net = _Net()
    with LogRecords('ppdet_rtdetr.native.conv_grad') as logs:
        assert conv_grad.use_onednn_conv_grads(net) == 0
    assert logs.messages == [('WARNING', 'oneDNN convolution gradients failed their self-check on stem (Conv2D): '
                                         'oneDNN dnnl_convolution_backward_data_primitive_desc_create returned '
                                         "unimplemented; training keeps Paddle's kernels")]


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


def test_multi_scale_training_keeps_a_bounded_cache(monkeypatch):
    """A multi-scale schedule cycles through input sizes, each a geometry: at most MAX_GEOMETRIES stay, every
    evicted one is destroyed, and resident memory stays flat."""
    monkeypatch.setattr(conv_grad, '_PRIMITIVES', collections.OrderedDict())
    monkeypatch.setattr(conv_grad, 'MAX_GEOMETRIES', 4)
    closed = []
    real_close = conv_grad.ConvGradPrimitives.close

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(conv_grad.ConvGradPrimitives, 'close', close)
    paddle.seed(5)
    layer = paddle.nn.Conv2D(16, 16, 3, padding=1)
    assert conv_grad.use_onednn_conv_grads(layer) == 1
    rng, sizes, rss = np.random.RandomState(6), range(32, 54, 2), []
    for _ in range(6):
        for size in sizes:
            x = paddle.to_tensor(rng.rand(1, 16, size, size + 4).astype('float32'))
            x.stop_gradient = False
            (layer(x) ** 2).sum().backward()
        rss.append(_rss_mb())
    assert len(conv_grad._PRIMITIVES) == 4
    # the self-check's primitives, then every geometry built (11 per cycle: each was evicted before it came
    # back) but the 4 kept
    assert len(closed) == 1 + 6 * len(sizes) - 4 and all(p.data is None for p in closed)
    assert rss[-1] - rss[1] < 5, 'resident memory grew from {:.1f} to {:.1f} MB'.format(rss[1], rss[-1])


def test_choice_is_checked_by_name():
    conv_grad.check_choice('onednn')
    conv_grad.check_choice('paddle')
    with pytest.raises(ValueError) as error:
        conv_grad.check_choice('mkldnn')
    assert str(error.value) == "cpu_conv_grad: 'mkldnn' is not one of 'onednn', 'paddle'"


@pytest.fixture(scope='module')
def shapes4(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('shapes4'), num_train=4, num_val=1)


def _switched(model):
    return sum('forward' in vars(layer) for layer in model.sublayers())


def test_trainer_switches_cpu_training_unless_told_not_to(tmp_path, shapes4):
    with LogRecords('ppdet_rtdetr.engine.trainer') as logs:
        trainer = RTDETRTrainer(light_config(tmp_path / 'a', shapes4), mode='train')
    expected = sum(conv_grad.eligible(layer) for layer in trainer.model.sublayers())
    assert expected > 0 and _switched(trainer.model) == expected
    assert ('INFO', "convolution gradients of {} layers on oneDNN (cpu_conv_grad: paddle keeps Paddle's "
                    "kernels)".format(expected)) in logs.messages
    kept = RTDETRTrainer(light_config(tmp_path / 'b', shapes4, cpu_conv_grad='paddle'), mode='train')
    assert _switched(kept.model) == 0
    evaluating = RTDETRTrainer(light_config(tmp_path / 'c', shapes4), mode='eval')
    assert _switched(evaluating.model) == 0
    with pytest.raises(ValueError, match="cpu_conv_grad: 'yes' is not one of"):
        RTDETRTrainer(light_config(tmp_path / 'd', shapes4, cpu_conv_grad='yes'), mode='train')


def test_trainer_without_onednn_trains_on_paddles_kernels(tmp_path, shapes4, monkeypatch):
    def unavailable():
        raise dnnl.DnnlUnavailable('no oneDNN library in this Paddle build (test)')

    monkeypatch.setattr(dnnl, 'library', unavailable)
    with LogRecords('ppdet_rtdetr.engine.trainer') as logs:
        trainer = RTDETRTrainer(light_config(tmp_path / 'a', shapes4), mode='train')
    assert _switched(trainer.model) == 0
    assert ('WARNING', "convolution gradients stay on Paddle's CPU kernels: no oneDNN library in this Paddle "
                       "build (test)") in logs.messages


def test_an_untested_onednn_version_is_named(monkeypatch):
    monkeypatch.setattr(dnnl, 'TESTED_VERSIONS', ((3, 99),))
    monkeypatch.setattr(dnnl, '_LIBRARY', [])
    with LogRecords('ppdet_rtdetr.native.onednn') as logs:
        lib = dnnl.library()
    version = lib.lib.dnnl_version().contents
    (level, message), = logs.messages
    assert level == 'WARNING' and 'is oneDNN {}.{}.{}, not among the versions these bindings were tested with ' \
        '(3.99)'.format(version.major, version.minor, version.patch) in message, message
