"""Encoder anchors of RT-DETR's query selection, in logit space."""
import math

import paddle

__all__ = ['generate_anchors', 'AnchorsOfEvalSize']


def generate_anchors(spatial_shapes, grid_size=0.05, eps=1e-2, dtype='float32'):
    """One anchor box per memory token: its cell centre, size grid_size * 2^level.

    Centres are normalised by the map's width on x and its height on y (the official PaddleDetection code
    divides by [h, w], wrong on non-square inputs: PaddleDetection #8680).

    Args:
        spatial_shapes (list[(int, int)]): (h, w) of each level.
        grid_size (float): anchor size on level 0, relative to the image.
        eps (float): anchors with any coordinate outside (eps, 1 - eps) are invalid.
    Returns:
        anchors [1, l, 4] cxcywh in logit space (inverse sigmoid), +inf where invalid;
        valid_mask bool [1, l, 1].
    """
    anchors = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = paddle.meshgrid(paddle.arange(h, dtype=dtype), paddle.arange(w, dtype=dtype))
        # [w, h] built with paddle.full: paddle.to_tensor leaks ~120 bytes of host memory per call in Paddle 3.3
        size = paddle.concat([paddle.full([1], w, dtype), paddle.full([1], h, dtype)])
        centre = (paddle.stack([grid_x, grid_y], -1) + 0.5) / size
        wh = paddle.full_like(centre, grid_size * 2.0 ** lvl)
        # [h, w, 4] -> [1, h*w, 4]
        anchors.append(paddle.concat([centre, wh], -1).reshape([1, h * w, 4]))
    anchors = paddle.concat(anchors, 1)
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = paddle.log(anchors / (1 - anchors))
    anchors = paddle.where(valid_mask, anchors, paddle.full_like(anchors, float('inf')))
    return anchors, valid_mask


class AnchorsOfEvalSize(object):
    """What both RT-DETR transformers (boxes, masks) share about their anchors: precomputed at ``eval_size``.

    The layer using it sets ``eval_size`` ([h, w] or None), ``feat_strides`` and ``eps`` and calls
    ``_register_eval_anchors()`` once built: the anchors of the export / eval size are then buffers (out of the
    state dict), and ``_anchors`` returns them when the maps have that size, or computes others.
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {'backbone_feat_channels': [s.channels for s in input_shape],
                'feat_strides': [s.stride for s in input_shape]}

    def _eval_spatial_shapes(self):
        h, w = self.eval_size
        return [(math.ceil(h / s), math.ceil(w / s)) for s in self.feat_strides]

    def _register_eval_anchors(self):
        if self.eval_size:
            anchors, valid_mask = generate_anchors(self._eval_spatial_shapes(), eps=self.eps)
            self.register_buffer('anchors', anchors, persistable=False)
            self.register_buffer('valid_mask', valid_mask, persistable=False)

    def _anchors(self, spatial_shapes, dtype):
        """(anchors [1, l, 4], valid_mask [1, l, 1]) of maps of (h, w) `spatial_shapes` (see generate_anchors)."""
        if not self.training and self.eval_size and [tuple(s) for s in self._eval_spatial_shapes()] == \
                [tuple(s) for s in spatial_shapes]:
            return self.anchors.astype(dtype), self.valid_mask
        return generate_anchors(spatial_shapes, eps=self.eps, dtype=dtype)
