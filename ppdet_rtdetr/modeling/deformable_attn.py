"""Multi-scale deformable attention (Deformable DETR) in pure Paddle, with RT-DETRv2's options.

Two samplers share one code path:
- `default`: bilinear `grid_sample` (align_corners=False, zero padding), the official numbers;
- `discrete`: integer index gather, no `grid_sample` (TensorRT < 8.5 / ONNX opset < 16 have none).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..native.cpu_ops import ms_deform_attn_cpu
from .layers import broadcast_multiply

__all__ = ['MSDeformableAttention', 'ms_deform_attn_core']


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights, num_points_list,
                        method='default'):
    """Weighted sum of values sampled at fractional locations, per head, over levels and points.

    Args:
        value (Tensor): [b, l, nh, c/nh], levels concatenated row-major in `spatial_shapes` order.
        spatial_shapes (list[(int, int)]): (h, w) of each level; sum(h * w) == l.
        sampling_locations (Tensor): [b, q, nh, sum(np), 2] normalised (x, y) in [0, 1] of the level's map
            (outside -> zeros for `default`, clamped to the border for `discrete`); points grouped by level.
        attention_weights (Tensor): [b, q, nh, sum(np)], softmax-normalised over all points of a head.
        num_points_list (list[int]): np of each level.
        method (str): 'default' (bilinear) or 'discrete' (pixel (floor(x * w + 0.5), floor(y * h + 0.5)),
            clamped to the map: the official RT-DETRv2 rule, with the x index clamped by w, not h).
    Returns:
        Tensor: [b, q, nh * c/nh].
    """
    if method not in ('default', 'discrete'):
        raise ValueError(f"cross_attn_method must be 'default' or 'discrete', got '{method}'")
    b, _, nh, hc = value.shape
    q = sampling_locations.shape[1]
    value_list = value.split([h * w for h, w in spatial_shapes], axis=1)
    # points before queries, so that the per-level samples join and are summed on a middle axis (contiguous
    # blocks of q): concatenating on a last axis of np_l values and its gradient (a split there) cost more than
    # the sampling itself in a training step, and summing 12 points on the last axis is ~20x slower in Paddle
    # Inference. The sum is the official one (multiply, then add the points in order): bit-equal outputs.
    # [b, q, nh, sum(np), 2] -> [b, nh, sum(np), q, 2] -> [b*nh, sum(np), q, 2], then one chunk per level
    locs = sampling_locations.transpose([0, 2, 3, 1, 4]).flatten(0, 1)
    locs_list = locs.split(num_points_list, axis=1)
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [b, h*w, nh, hc] -> [b, nh, hc, h*w] -> [b*nh, hc, h, w]
        value_l = value_list[lvl].transpose([0, 2, 3, 1]).reshape([b * nh, hc, h, w])
        if method == 'default':
            # [b*nh, hc, np_l, q]
            sampled.append(F.grid_sample(value_l, 2 * locs_list[lvl] - 1, mode='bilinear',
                                         padding_mode='zeros', align_corners=False))
        else:
            sampled.append(_gather_nearest(value_l, locs_list[lvl]))
    # [b, q, nh, sum(np)] -> [b, nh, sum(np), q] -> [b*nh, 1, sum(np), q]
    weights = attention_weights.transpose([0, 2, 3, 1]).reshape([b * nh, 1, -1, q])
    # [b*nh, hc, sum(np), q] -> [b*nh, hc, q]
    out = broadcast_multiply(paddle.concat(sampled, axis=2), weights).sum(2)
    # [b*nh, hc, q] -> [b, nh*hc, q] -> [b, q, nh*hc]
    return out.reshape([b, nh * hc, q]).transpose([0, 2, 1])


def _gather_nearest(value_l, locs):
    """value_l [n, hc, h, w], locs [n, np, q, 2] (x, y in [0, 1]) -> [n, hc, np, q] by index gather."""
    n, hc, h, w = value_l.shape
    npt, q = locs.shape[1], locs.shape[2]
    x = paddle.floor(locs[..., 0] * w + 0.5).clip(0, w - 1).astype('int64')
    y = paddle.floor(locs[..., 1] * h + 0.5).clip(0, h - 1).astype('int64')
    index = (y * w + x).reshape([n, 1, npt * q]).expand([n, hc, npt * q])
    # [n, hc, h, w] -> [n, hc, h*w] -> gather -> [n, hc, np, q]
    out = paddle.take_along_axis(value_l.reshape([n, hc, h * w]), index, axis=2)
    return out.reshape([n, hc, npt, q])


class MSDeformableAttention(nn.Layer):
    """Multi-scale deformable cross-attention around reference boxes.

    Args:
        embed_dim (int): c. num_heads (int): nh. num_levels (int): nl.
        num_points (int|list[int]): sampling points per level (a list gives RT-DETRv2's per-level numbers).
        method (str): 'default' (grid_sample) or 'discrete' (index gather; sampling offsets are frozen,
            since the gather has no gradient with respect to the locations).
        offset_scale (float): offsets are scaled by offset_scale * box size / np of the level (0.5 in v1 and v2).
        lr_mult (float): learning-rate multiplier of `sampling_offsets` (official 0.1).
        points_scale_in_state_dict (bool): keep `num_points_scale` (the 1/np of each point) in the state dict, as
            RT-DETRv2 checkpoints do; v1 checkpoints do not have it.

    `fuse_cpu_sampling()` switches the sampling to the compiled CPU operator (for a CPU export).

    forward(query [b, q, c], reference_points [b, q, 1, 4] normalised cxcywh, value [b, l, c],
    spatial_shapes list of (h, w)) -> [b, q, c].
    """

    def __init__(self, embed_dim=256, num_heads=8, num_levels=4, num_points=4, method='default',
                 offset_scale=0.5, lr_mult=0.1, points_scale_in_state_dict=False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        points = list(num_points) if isinstance(num_points, (list, tuple)) else [num_points] * num_levels
        if len(points) != num_levels:
            raise ValueError(f'num_decoder_points {points} must give one number per level ({num_levels} levels)')
        self.embed_dim, self.num_heads, self.num_levels = embed_dim, num_heads, num_levels
        self.num_points_list = points
        self.method, self.offset_scale = method, offset_scale
        self.cpu_fused = False
        self.head_dim = embed_dim // num_heads
        total = num_heads * sum(points)
        self.sampling_offsets = nn.Linear(embed_dim, total * 2,
                                          weight_attr=paddle.ParamAttr(learning_rate=lr_mult),
                                          bias_attr=paddle.ParamAttr(learning_rate=lr_mult))
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        scale = paddle.to_tensor([1. / n for n in points for _ in range(n)], dtype='float32')
        self.register_buffer('num_points_scale', scale, persistable=points_scale_in_state_dict)
        if method == 'discrete':
            for p in self.sampling_offsets.parameters():
                p.stop_gradient = True
        self._reset_parameters()

    def _reset_parameters(self):
        """Deformable DETR init: zero offset weights, bias points spread on rays around the reference point."""
        nn.initializer.Constant(0.)(self.sampling_offsets.weight)
        thetas = paddle.arange(self.num_heads, dtype='float32') * (2.0 * 3.141592653589793 / self.num_heads)
        grid = paddle.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)  # [nh, 2], on the unit square
        # point i of a level sits at distance i + 1 along its head's ray
        steps = paddle.concat([paddle.arange(1, n + 1, dtype='float32') for n in self.num_points_list])
        bias = grid.unsqueeze(1) * steps.reshape([1, -1, 1])  # [nh, sum(np), 2]
        self.sampling_offsets.bias.set_value(bias.flatten())
        nn.initializer.Constant(0.)(self.attention_weights.weight)
        nn.initializer.Constant(0.)(self.attention_weights.bias)
        nn.initializer.XavierUniform()(self.value_proj.weight)
        nn.initializer.Constant(0.)(self.value_proj.bias)
        nn.initializer.XavierUniform()(self.output_proj.weight)
        nn.initializer.Constant(0.)(self.output_proj.bias)

    def fuse_cpu_sampling(self):
        """Sample with `ppdet_rtdetr.native.cpu_ops.ms_deform_attn_cpu` from now on: the same numbers as the default
        sampler, one CPU operator, no gradient (an export's, see `export.cpu_fused_attention`).

        Raises:
            ValueError: the 'discrete' sampler, which has no compiled form.
        """
        if self.method != 'default':
            raise ValueError(f"export.cpu_fused_attention: the CPU operator is the default (bilinear) sampler; "
                             f"this model's cross_attn_method is '{self.method}'")
        self.cpu_fused = True

    def _locations(self, query, reference_points):
        """Sampling locations box_xy + offset * (offset_scale / np) * box_wh: [b*q, nh*sum(np)*2], each row one
        query's nh*sum(np) (x, y) pairs.

        The box and the scales are tiled to that flat shape rather than broadcast over heads and points:
        onnxruntime broadcasts a last axis of 2 slowly (0.6 ms per product or sum at [300, 96, 2], three per
        decoder layer) and Paddle Inference runs 5-D broadcasts on reference kernels. Each location is the same
        products and sum in the same order as the official broadcast form, so the same float32 numbers, in
        dygraph and in the export alike.
        """
        b, q = query.shape[:2]
        n = self.num_heads * sum(self.num_points_list)
        # [sum(np)] -> [nh*sum(np)] -> [nh*sum(np), 2] -> [nh*sum(np)*2]: each point's 1/np times offset_scale,
        # once for x and once for y
        scale = self.num_points_scale.astype(query.dtype).tile([self.num_heads]) * self.offset_scale
        scale = scale.unsqueeze(-1).tile([1, 2]).flatten()
        # [b, q, nh*sum(np)*2] -> [b*q, nh*sum(np)*2]; [b, q, 1, 4] -> [b*q, 4], one box per query
        offsets = self.sampling_offsets(query).reshape([b * q, n * 2])
        ref = reference_points.reshape([b * q, 4])
        return ref[:, :2].tile([1, n]) + offsets * scale * ref[:, 2:].tile([1, n])

    def forward(self, query, reference_points, value, spatial_shapes):
        b, q = query.shape[:2]
        total = sum(self.num_points_list)
        # [b, l, c] -> [b, l, nh, c/nh]
        value = self.value_proj(value).reshape([b, -1, self.num_heads, self.head_dim])
        weights = F.softmax(self.attention_weights(query).reshape([b, q, self.num_heads, total]), axis=-1)
        if reference_points.shape[-1] != 4:
            raise ValueError(f'reference_points must be boxes [b, q, 1, 4], got {reference_points.shape}')
        # [b, q, nh*sum(np)*2] -> [b, q, nh, sum(np), 2]
        locs = self._locations(query, reference_points).reshape([b, q, self.num_heads, total, 2])
        if self.cpu_fused:
            if self.training:
                raise RuntimeError('MSDeformableAttention: the compiled CPU sampling has no gradient; it is for '
                                   'inference (call eval())')
            out = ms_deform_attn_cpu(value, spatial_shapes, locs, weights, self.num_points_list)
        else:
            out = ms_deform_attn_core(value, spatial_shapes, locs, weights, self.num_points_list, self.method)
        return self.output_proj(out)
