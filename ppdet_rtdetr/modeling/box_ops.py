"""Box conversions and overlap measures: pure functions on Paddle tensors, with no state.

Boxes are either ``cxcywh`` (centre x, centre y, width, height) or ``xyxy`` (x1, y1, x2, y2), in the
last dimension. Any leading dimensions are allowed unless a function says otherwise.
"""
import math

import paddle

__all__ = [
    'cxcywh_to_xyxy', 'xyxy_to_cxcywh', 'inverse_sigmoid', 'box_area', 'pairwise_iou',
    'pairwise_giou', 'aligned_iou', 'IOU_MODES'
]

IOU_MODES = ('iou', 'giou', 'diou', 'ciou')


def cxcywh_to_xyxy(x):
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = x.unbind(-1)
    return paddle.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(x):
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x1, y1, x2, y2 = x.unbind(-1)
    return paddle.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def inverse_sigmoid(x, eps=1e-5):
    """Logit of ``x``, clipped so that 0 and 1 map to finite values.

    The clip order (to [0, 1] first, then each side of the ratio to ``eps``) is the official
    RT-DETR one; initial reference points, and so the reference numbers, depend on it.
    """
    x = x.clip(0, 1)
    return paddle.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def box_area(boxes):
    """[..., 4] xyxy -> [...] area (negative if the box is inverted; callers pass valid boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1, boxes2, eps=1e-9):
    """IoU of every box in ``boxes1`` [..., n, 4] with every box in ``boxes2`` [..., m, 4] (xyxy; leading
    dimensions broadcast, e.g. a batch).

    Denominators are clipped to ``eps`` rather than offset by it: valid boxes get exactly the
    official (eps-free) numbers, and a pair of zero-area boxes gets 0 instead of 0/0 = nan,
    which would make the matcher's assignment fail.

    Returns:
        (iou [..., n, m], union [..., n, m]). The union is returned because GIoU needs it.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    # [..., n, 1, 2] vs [..., 1, m, 2] -> [..., n, m, 2]
    lt = paddle.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = paddle.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clip(min=eps), union


def pairwise_giou(boxes1, boxes2, eps=1e-9):
    """Generalised IoU (Rezatofighi et al. 2019) of every pair: [n, 4], [m, 4] xyxy -> [n, m]."""
    iou, union = pairwise_iou(boxes1, boxes2, eps)
    # smallest enclosing box of each pair: [n, m, 2]
    lt = paddle.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = paddle.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    enclose = wh[..., 0] * wh[..., 1]
    return iou - (enclose - union) / enclose.clip(min=eps)


def aligned_iou(boxes1, boxes2, mode='iou', eps=1e-9):
    """IoU-family overlap of matched pairs: ``boxes1[i]`` with ``boxes2[i]``.

    Args:
        boxes1 (Tensor): [n, 4] xyxy, the predictions.
        boxes2 (Tensor): [n, 4] xyxy, the targets. Every mode's value is symmetric in the two.
        mode (str): 'iou', 'giou', 'diou' (IoU minus squared centre distance over squared
            enclosing diagonal) or 'ciou' (DIoU minus alpha * v, v the aspect-ratio term).
        eps (float): lower clip of every denominator, so zero-area boxes give finite values
            while valid boxes get exactly the eps-free formula (as in ``pairwise_iou``).

    Returns:
        Tensor: [n], in [-1, 1] (iou in [0, 1]).

    Raises:
        ValueError: if ``mode`` is not one of ``IOU_MODES``.
    """
    if mode not in IOU_MODES:
        raise ValueError(f"aligned_iou: unknown mode '{mode}', expected one of {list(IOU_MODES)}")
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    w1, h1 = x2 - x1, y2 - y1
    w2, h2 = x2g - x1g, y2g - y1g
    inter = ((paddle.minimum(x2, x2g) - paddle.maximum(x1, x1g)).clip(min=0) *
             (paddle.minimum(y2, y2g) - paddle.maximum(y1, y1g)).clip(min=0))
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / union.clip(min=eps)
    if mode == 'iou':
        return iou

    # smallest enclosing box
    enc_w = paddle.maximum(x2, x2g) - paddle.minimum(x1, x1g)
    enc_h = paddle.maximum(y2, y2g) - paddle.minimum(y1, y1g)
    if mode == 'giou':
        enclose = enc_w * enc_h
        return iou - (enclose - union) / enclose.clip(min=eps)

    centre_dist2 = ((x1 + x2 - x1g - x2g)**2 + (y1 + y2 - y1g - y2g)**2) / 4
    diag2 = enc_w**2 + enc_h**2
    diou = iou - centre_dist2 / diag2.clip(min=eps)
    if mode == 'diou':
        return diou

    # the clip keeps atan finite for zero-height boxes
    aspect_diff = paddle.atan(w2 / h2.clip(min=eps)) - paddle.atan(w1 / h1.clip(min=eps))
    v = (4 / math.pi**2) * aspect_diff**2
    # the CIoU paper treats alpha as a constant trade-off weight: no gradient through it
    with paddle.no_grad():
        alpha = v / (1 - iou + v).clip(min=eps)
    return diou - alpha * v
