"""Bilinear resize (align_corners=False) as a layer with a deploy form that avoids Paddle's interp ops.

Paddle 3.3 Inference with oneDNN cannot run `bilinear_interp` / `nearest_interp` from a PIR program
("ConvertPirAttribute2RuntimeAttribute not support pir::ArrayAttribute<pir::DoubleAttribute>", the op's `scale`
attribute). The deploy form (`convert_to_deploy`, which tools/export_model.py applies) computes the same
bilinear weights as two matrix products, [H, h] x [b*c, h, w] x [w, W], which every engine runs; the weights are
F.interpolate's, so the values agree to float rounding (~1e-6). Eval and training keep F.interpolate, the
official arithmetic.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

__all__ = ['BilinearResize', 'bilinear_matrix', 'matrix_resize', 'scalar_tensor']


def scalar_tensor(v, dtype):
    """A Python number or an int tensor (a shape element of a traced graph) as a 0-D tensor of `dtype`."""
    return paddle.full([], float(v), dtype) if isinstance(v, (int, float)) else paddle.cast(v, dtype).reshape([])


def bilinear_matrix(num_out, num_in, dtype='float32', src=None, dst=None):
    """Weights of F.interpolate's bilinear resize (align_corners=False) along one axis, as a matrix.

    Output pixel i reads source coordinate max(0, (i + 0.5) * src / dst - 0.5) between pixels floor(.) and
    min(floor(.) + 1, src - 1): row i has those two weights (one weight of 1 where they coincide).
    Args:
        num_out, num_in (int | int Tensor scalar): rows and columns; Tensors in a graph traced for any size.
        src, dst (Tensor|None): [b] float sizes: per image, its first src source pixels resized to dst (rows
            past dst are not meaningful); default: num_in resized to num_out.
    Returns:
        Tensor: [num_out, num_in], or [b, num_out, num_in] with src / dst.
    """
    if src is None:
        src, dst = scalar_tensor(num_in, dtype), scalar_tensor(num_out, dtype)
    src, dst = src.astype(dtype).unsqueeze(-1), dst.astype(dtype).unsqueeze(-1)  # [.., 1]
    coord = paddle.clip((paddle.arange(num_out, dtype=dtype) + 0.5) * (src / dst) - 0.5, min=0)  # [.., n_out]
    lo = paddle.floor(coord)
    frac = (coord - lo).unsqueeze(-1)  # [.., n_out, 1]
    hi = paddle.minimum(lo + 1, src - 1)
    index = paddle.arange(num_in, dtype=dtype)  # [n_in]
    return ((index == lo.unsqueeze(-1)).astype(dtype) * (1 - frac) +
            (index == hi.unsqueeze(-1)).astype(dtype) * frac)


def matrix_resize(x, size):
    """x [b, c, h, w] -> [b, c, H, W] for size (H, W) (ints or int tensors): F.interpolate's bilinear resize
    (align_corners=False) as two matrix products."""
    hw = paddle.shape(x)[2:]  # tensors: a graph traced for any input size knows no sizes
    rows = bilinear_matrix(size[0], hw[0], x.dtype)  # [H, h]
    cols = bilinear_matrix(size[1], hw[1], x.dtype)  # [W, w]
    # [b, c, h, w] -> [b*c, h, w] first: oneDNN's matmul read a convolution's output in its NHWC memory as if
    # it were NCHW (wrong numbers) when given the 4-D tensor; the reshape makes a plain copy
    out = paddle.matmul(x.reshape([-1, hw[0], hw[1]]), cols, transpose_y=True)  # [b*c, h, W]
    out = paddle.matmul(rows, out)  # [b*c, H, W]
    return out.reshape([-1, x.shape[1], size[0], size[1]])  # [b, c, H, W]


class BilinearResize(nn.Layer):
    """Parameter-free bilinear resize (align_corners=False), by a factor or to a size.

    Args:
        scale_factor (int|None): the factor when forward gets no size (nn.Upsample's role).

    forward(x [b, c, h, w], like=None) -> [b, c, H, W], (H, W) the size of `like` [.., H, W] (default: x's size
    times scale_factor): F.interpolate, or after `convert_to_deploy()` the same weights as two matrix products
    (see the module docstring).
    """

    def __init__(self, scale_factor=None):
        super().__init__()
        self.scale_factor = scale_factor
        self.deploy = False

    def convert_to_deploy(self):
        self.deploy = True

    def forward(self, x, like=None):
        if not self.deploy:
            if like is None:
                return F.interpolate(x, scale_factor=self.scale_factor, mode='bilinear', align_corners=False)
            return F.interpolate(x, size=like.shape[2:], mode='bilinear', align_corners=False)
        # paddle.shape: the sizes stay tensors in a graph traced for any input size
        hw = paddle.shape(x)[2:]
        size = [hw[0] * self.scale_factor, hw[1] * self.scale_factor] if like is None else paddle.shape(like)[2:]
        return matrix_resize(x, size)
