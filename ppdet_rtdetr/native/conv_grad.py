"""Convolution gradients on oneDNN for CPU training; the forward pass stays Paddle's.

On CPU, Paddle's dygraph convolution is im2col + GEMM for the forward pass and for both gradients. On wide
maps with few channels the im2col copies bound it: R18vd's stem convolutions at 320x320 run at 27-47
GFLOP/s against a ~200 GFLOP/s GEMM, and convolution gradients are ~40% of a training step. oneDNN's direct
convolution kernels compute the same gradients 1.3-4x faster on R18vd's 3x3 layers (``benchmarks/README.md``).

``use_onednn_conv_grads(model)`` switches every eligible ``nn.Conv2D`` of a model to ``_ConvOneDNNGrad``:
- forward: Paddle's own ``conv2d`` kernel and the same bias add as ``nn.Conv2D``, so outputs and losses are
  bit-equal to the official model's;
- backward: input and weight gradients from oneDNN (``dnnl.py``: the library inside the Paddle wheel),
  equal to Paddle's up to float32 summation order (relative 1e-5 on weights; ``tests/native/test_conv_grad.py``).
Eligible: float32 NCHW, groups 1, explicit zero padding, a kernel larger than 1x1 (a 1x1 convolution is a
GEMM without im2col in Paddle; oneDNN ran 0.8-1.5x as fast there, even overall). Any other call (another
dtype, a tensor not on CPU) runs the layer's own forward; a geometry oneDNN refuses gets Paddle's gradients,
with one warning.

Before switching a model, ``use_onednn_conv_grads`` runs a self-check: the input and weight gradients of the
model's first eligible convolution on a small random batch, from oneDNN and from Paddle's kernels. On any
mismatch or oneDNN error the model keeps Paddle's kernels, with one warning saying why. The primitives of at
most ``MAX_GEOMETRIES`` geometries are kept (least recently used first out, and destroyed), so multi-scale
training does not grow memory with every input size.
RTDETRTrainer switches the model in CPU training unless ``cpu_conv_grad: paddle`` (``TRAINER_KEY``).
"""
import collections
import types

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ppdet.utils.logger import setup_logger

from . import onednn as dnnl

logger = setup_logger(__name__)

__all__ = ['TRAINER_KEY', 'CHOICES', 'MAX_GEOMETRIES', 'check_choice', 'eligible', 'self_check', 'use_onednn_conv_grads',
           'ConvGradPrimitives']

TRAINER_KEY = 'cpu_conv_grad'
CHOICES = ('onednn', 'paddle')
# geometries whose primitives are kept (a detector has a few dozen; multi-scale training multiplies them)
MAX_GEOMETRIES = 128


def check_choice(value):
    """Refuses a ``cpu_conv_grad`` value other than 'onednn' / 'paddle', naming the key and the value."""
    if value not in CHOICES:
        raise ValueError("{}: {!r} is not one of {}".format(TRAINER_KEY, value, ', '.join(map(repr, CHOICES))))


class _Workspace(object):
    """Reused float32 buffers for the reordered operands, one per slot, grown to the largest size asked.

    Kept across calls and geometries: a fresh 26 MB buffer per operand and call cost more page faults than the
    reorder itself, and buffers cached per geometry would grow with every input size of multi-scale training.
    """

    def __init__(self):
        self.slots = {}

    def get(self, slot, numel):
        buffer = self.slots.get(slot)
        if buffer is None or buffer.shape[0] < numel:
            buffer = self.slots[slot] = paddle.empty([numel], 'float32')
        return buffer


_WORKSPACE = _Workspace()


class _Operand(object):
    """One tensor argument of a primitive: the caller's plain tensor and, when the primitive chose another
    layout, a reorder between the two through a workspace slot (one slot per operand of a call)."""

    def __init__(self, lib, plain_desc, chosen_desc, into_primitive, slot):
        self.lib, self.into, self.slot = lib, into_primitive, slot
        self.user = dnnl.Memory(lib, plain_desc)
        self.inner, self.reorder = self.user, None
        if not lib.equal(plain_desc, chosen_desc):
            self.inner = dnnl.Memory(lib, chosen_desc)
            self.reorder = (lib.reorder(plain_desc, chosen_desc) if into_primitive
                            else lib.reorder(chosen_desc, plain_desc))

    def stage(self, tensor):
        """Binds `tensor`; for an input, queues its reorder. Returns what must stay alive until the wait."""
        self.user.bind(tensor)
        if self.reorder is None:
            return [tensor]
        buffer = self.inner.bind(_WORKSPACE.get(self.slot, self.inner.numel))
        if self.into:
            self.lib.execute(self.reorder, [(dnnl.ARG_SRC, self.user), (dnnl.ARG_DST, self.inner)])
        return [tensor, buffer]

    def unstage(self):
        """For an output: queues the reorder back into the caller's tensor."""
        if self.reorder is not None:
            self.lib.execute(self.reorder, [(dnnl.ARG_SRC, self.inner), (dnnl.ARG_DST, self.user)])

    def close(self):
        """Destroys the memories and the reorder."""
        self.user.close()
        if self.reorder is not None:
            self.inner.close()
            self.lib.destroy('primitive', self.reorder)


class ConvGradPrimitives(object):
    """oneDNN backward-data and backward-weights primitives of one convolution geometry (groups 1, float32).

    Args:
        x_shape, w_shape, y_shape: [n, c, h, w], [o, c, kh, kw], [n, o, oh, ow].
        stride, dilation: [sh, sw], [dh, dw] (Paddle's convention: 1 = no dilation).
        padding: [top, bottom, left, right].
    Call with (x, weight, dy, need_dx, need_dw) -> (dx or None, dw or None), new contiguous float32 tensors.
    """

    def __init__(self, x_shape, w_shape, y_shape, stride, padding, dilation, lib=None):
        lib = lib or dnnl.library()
        self.lib, self.x_shape, self.w_shape = lib, list(x_shape), list(w_shape)
        self.data = self.weights = None
        self._operands = []
        strides, dilates = dnnl.dims(stride), dnnl.dims([d - 1 for d in dilation])
        pad_l, pad_r = dnnl.dims([padding[0], padding[2]]), dnnl.dims([padding[1], padding[3]])
        descs, primitive_descs = [], []  # destroyed once the primitives and memories exist (they keep copies)
        try:
            for make in (lib.any_desc, lib.plain_desc):
                for shape in (x_shape, w_shape, y_shape):
                    descs.append(make(shape))
            any_x, any_w, any_y, plain_x, plain_w, plain_y = descs
            # the backward descriptors take a forward one as a hint of the layouts
            forward = lib.create('dnnl_convolution_forward_primitive_desc_create', lib.engine,
                                 dnnl.PROP_FORWARD_TRAINING, dnnl.CONVOLUTION_DIRECT, any_x, any_w, None, any_y,
                                 strides, dilates, pad_l, pad_r, None)
            primitive_descs.append(forward)
            data = lib.create('dnnl_convolution_backward_data_primitive_desc_create', lib.engine,
                              dnnl.CONVOLUTION_DIRECT, any_x, any_w, any_y, strides, dilates, pad_l, pad_r, forward,
                              None)
            primitive_descs.append(data)
            weights = lib.create('dnnl_convolution_backward_weights_primitive_desc_create', lib.engine,
                                 dnnl.CONVOLUTION_DIRECT, any_x, any_w, None, any_y, strides, dilates, pad_l, pad_r,
                                 forward, None)
            primitive_descs.append(weights)
            self.data, self.weights = lib.primitive(data), lib.primitive(weights)
            for name, plain, primitive_desc, arg, into, slot in (
                    ('data_dy', plain_y, data, dnnl.ARG_DIFF_DST, True, 0),
                    ('data_w', plain_w, data, dnnl.ARG_WEIGHTS, True, 1),
                    ('data_dx', plain_x, data, dnnl.ARG_DIFF_SRC, False, 2),
                    ('weights_x', plain_x, weights, dnnl.ARG_SRC, True, 3),
                    ('weights_dy', plain_y, weights, dnnl.ARG_DIFF_DST, True, 4),
                    ('weights_dw', plain_w, weights, dnnl.ARG_DIFF_WEIGHTS, False, 5)):
                operand = _Operand(lib, plain, lib.query(primitive_desc, arg), into, slot)
                self._operands.append(operand)
                setattr(self, name, operand)
            # both primitives usually want dy in one layout: reorder it once
            self.share_dy = (self.data_dy.reorder is not None and
                             lib.equal(lib.query(data, dnnl.ARG_DIFF_DST), lib.query(weights, dnnl.ARG_DIFF_DST)))
        except BaseException:
            self.close()
            raise
        finally:
            lib.destroy('primitive_desc', *primitive_descs)
            lib.destroy('memory_desc', *descs)

    def close(self):
        """Destroys the primitives and memories (the object is unusable after)."""
        for operand in self._operands:
            operand.close()
        self._operands = []
        self.lib.destroy('primitive', self.data, self.weights)
        self.data = self.weights = None

    def __call__(self, x, weight, dy, need_dx=True, need_dw=True):
        alive, dx, dw = [], None, None
        if need_dx:
            dx = paddle.empty(self.x_shape, 'float32')
            alive += self.data_dy.stage(dy) + self.data_w.stage(weight) + self.data_dx.stage(dx)
            self.lib.execute(self.data, [(dnnl.ARG_DIFF_DST, self.data_dy.inner), (dnnl.ARG_WEIGHTS, self.data_w.inner),
                                         (dnnl.ARG_DIFF_SRC, self.data_dx.inner)])
            self.data_dx.unstage()
        if need_dw:
            dw = paddle.empty(self.w_shape, 'float32')
            if need_dx and self.share_dy:
                dy_inner = self.data_dy.inner
            else:
                alive += self.weights_dy.stage(dy)
                dy_inner = self.weights_dy.inner
            alive += self.weights_x.stage(x) + self.weights_dw.stage(dw)
            self.lib.execute(self.weights, [(dnnl.ARG_SRC, self.weights_x.inner), (dnnl.ARG_DIFF_DST, dy_inner),
                                            (dnnl.ARG_DIFF_WEIGHTS, self.weights_dw.inner)])
            self.weights_dw.unstage()
        self.lib.wait()
        del alive
        return dx, dw


# geometry -> ConvGradPrimitives, or None where oneDNN refused it (Paddle's gradients then); least recently
# used first, at most MAX_GEOMETRIES entries
_PRIMITIVES = collections.OrderedDict()


def _primitives(x_shape, w_shape, y_shape, stride, padding, dilation):
    key = (tuple(x_shape), tuple(w_shape), tuple(stride), tuple(padding), tuple(dilation))
    if key in _PRIMITIVES:
        _PRIMITIVES.move_to_end(key)
        return _PRIMITIVES[key]
    try:
        primitives = ConvGradPrimitives(x_shape, w_shape, y_shape, stride, padding, dilation)
    except dnnl.DnnlError as e:
        logger.warning('convolution x {} weight {} stride {} padding {} dilation {}: {}; its gradients use '
                       'Paddle\'s kernels'.format(list(x_shape), list(w_shape), list(stride), list(padding),
                                                   list(dilation), e))
        primitives = None
    _PRIMITIVES[key] = primitives
    while len(_PRIMITIVES) > MAX_GEOMETRIES:
        _, evicted = _PRIMITIVES.popitem(last=False)
        if evicted is not None:
            evicted.close()
    return primitives


def _paddle_grads(x, weight, dy, stride, padding, dilation):
    """Paddle's own conv2d gradients (recomputing the forward), for a geometry oneDNN refused."""
    x_, w_ = x.detach(), weight.detach()
    x_.stop_gradient, w_.stop_gradient = x.stop_gradient, weight.stop_gradient
    wanted = [t for t in (x_, w_) if not t.stop_gradient]
    with paddle.set_grad_enabled(True):
        y = F.conv2d(x_, w_, None, stride, padding, dilation, 1, 'NCHW')
        grads = iter(paddle.grad([y], wanted, [dy]))
    return tuple(None if t.stop_gradient else next(grads) for t in (x_, w_))


class _ConvOneDNNGrad(PyLayer):
    """conv2d without bias: Paddle's forward kernel, oneDNN's gradients."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        y = F.conv2d(x, weight, None, stride, padding, dilation, 1, 'NCHW')
        ctx.save_for_backward(x, weight)
        ctx.geometry = (list(y.shape), stride, padding, dilation)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        y_shape, stride, padding, dilation = ctx.geometry
        primitives = _primitives(x.shape, weight.shape, y_shape, stride, _four_sided(padding), dilation)
        if primitives is None:
            return _paddle_grads(x, weight, dy, stride, padding, dilation)
        dy = dy if dy.is_contiguous() else dy.contiguous()
        return primitives(x, weight, dy, not x.stop_gradient, not weight.stop_gradient)


def _four_sided(padding):
    """Paddle's explicit padding [ph, pw] or [top, bottom, left, right] -> [top, bottom, left, right]."""
    padding = [int(p) for p in padding]
    return [padding[0], padding[0], padding[1], padding[1]] if len(padding) == 2 else padding


def eligible(layer):
    """Whether `layer` is an nn.Conv2D whose gradients ``_ConvOneDNNGrad`` computes (module docstring)."""
    if not isinstance(layer, paddle.nn.Conv2D):
        return False
    # nn.Conv2D's attributes as Paddle 3.3 names them; a Paddle that names them otherwise keeps its own gradients
    padding = getattr(layer, '_updated_padding', None)
    return (getattr(layer, '_groups', None) == 1 and getattr(layer, '_data_format', None) == 'NCHW'
            and getattr(layer, '_padding_mode', None) == 'zeros'
            and getattr(layer, '_padding_algorithm', None) == 'EXPLICIT'
            and max(getattr(layer, '_kernel_size', [1])) > 1
            and isinstance(padding, (list, tuple)) and len(padding) in (2, 4)
            and all(isinstance(p, int) for p in padding))


def _forward(self, x):
    if x.dtype != paddle.float32 or self.weight.dtype != paddle.float32 or not x.place.is_cpu_place():
        return type(self).forward(self, x)
    y = _ConvOneDNNGrad.apply(x, self.weight, list(self._stride), list(self._updated_padding), list(self._dilation))
    if self.bias is None:
        return y
    # as nn.Conv2D adds its bias (paddle.nn.functional.conv._conv_nd): bit-equal outputs
    return y + self.bias.reshape([1, -1, 1, 1])


def self_check(layer, rtol=1e-4):
    """Compares oneDNN's input and weight gradients of `layer`'s geometry with Paddle's on a small random batch.

    Args:
        layer (nn.Conv2D): an eligible convolution; its weight is copied, not changed.
        rtol (float): the largest error allowed, relative to the largest reference gradient (the two differ by
            float32 summation order: ~1e-6).
    Returns:
        str|None: None if both gradients agree, else what differed.
    Raises:
        dnnl.DnnlError: oneDNN refused the geometry.
    """
    out_c, in_c, kh, kw = layer.weight.shape
    rng = np.random.RandomState(0)
    # a small odd, non-square map, large enough for the kernel with any stride and dilation of the layer
    h, w = (2 * max(kh, kw) * max(layer._dilation) + 3,) * 2
    x = paddle.to_tensor(rng.randn(2, in_c, h, w + 2).astype('float32'))
    weight = paddle.to_tensor(layer.weight.numpy())
    stride, padding, dilation = list(layer._stride), list(layer._updated_padding), list(layer._dilation)
    y = F.conv2d(x, weight, None, stride, padding, dilation, 1, 'NCHW')
    dy = paddle.to_tensor(rng.randn(*y.shape).astype('float32'))
    primitives = ConvGradPrimitives(x.shape, weight.shape, y.shape, stride, _four_sided(padding), dilation)
    try:
        got = primitives(x, weight, dy)
    finally:
        primitives.close()
    x.stop_gradient = weight.stop_gradient = False
    with paddle.set_grad_enabled(True):
        want = paddle.grad([F.conv2d(x, weight, None, stride, padding, dilation, 1, 'NCHW')], [x, weight], [dy])
    for name, g, r in zip(('input', 'weight'), got, want):
        g, r = g.numpy(), r.numpy()
        err = float(np.abs(g - r).max() / max(float(np.abs(r).max()), 1e-30))
        if not err <= rtol:  # also catches NaN
            return '{} gradient differs from Paddle\'s by {:.3g} (relative; allowed {:g})'.format(name, err, rtol)
    return None


def use_onednn_conv_grads(model):
    """Switches every eligible nn.Conv2D in `model` to oneDNN gradients; returns how many.

    First runs ``self_check`` on the first eligible layer: on a mismatch or a oneDNN error the model is left
    unchanged, with one warning naming the layer and the reason, and 0 is returned.

    Raises:
        dnnl.DnnlUnavailable: Paddle's oneDNN library cannot be used (the model is left unchanged).
    """
    dnnl.library()
    named = [(name, layer) for name, layer in model.named_sublayers(include_self=True) if eligible(layer)]
    if named:
        name, first = named[0]
        try:
            problem = self_check(first)
        except dnnl.DnnlError as e:
            problem = str(e)
        if problem is not None:
            logger.warning('oneDNN convolution gradients failed their self-check on {} ({}): {}; training keeps '
                           'Paddle\'s kernels'.format(name or type(first).__name__, type(first).__name__, problem))
            return 0
    layers = [layer for _, layer in named]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return len(layers)
