"""Mask measures for Mask-RT-DETR's matcher and criterion: pure functions on Paddle tensors, with no state.

Predicted masks are logits (pre-sigmoid), gt masks are {0, 1}. Points are normalised ``(x, y)`` in [0, 1] over
the whole extent of a mask tensor, so a stride-4 prediction [h, w] and its full-size gt [H, W] are read at the
same places of the (padded) input image. Reading is bilinear with ``align_corners=False`` and zero padding, as in
PointRend / Mask2Former and the official PaddleDetection code.

Random points come from ``paddle.rand`` in Paddle's default dtype, with the official shapes and in the official
order, so that under the same ``paddle.seed`` the official code and ours read the masks at the same points.
"""
import paddle
import paddle.nn.functional as F

__all__ = ['point_sample', 'uncertain_points', 'pairwise_mask_cost', 'point_bce_loss', 'dice_loss',
           'binary_mask_iou']


def point_sample(feats, points):
    """Bilinear values of ``feats`` [n, c, h, w] at ``points`` [n, p, 2] (x, y in [0, 1]) -> [n, c, p].

    Every channel of item i is read at the points of item i. Points outside [0, 1] read zeros.
    """
    # [n, p, 2] -> [n, 1, p, 2], from [0, 1] to grid_sample's [-1, 1]
    grid = 2.0 * points.astype(feats.dtype).unsqueeze(1) - 1.0
    # [n, c, 1, p] -> [n, c, p]
    return F.grid_sample(feats, grid, align_corners=False).squeeze(2)


def uncertain_points(mask_logits, num_points, oversample_ratio=3.0, important_ratio=0.75):
    """Training points of each mask, most of them where the prediction is least certain (PointRend).

    Draws ``int(num_points * oversample_ratio)`` uniform points, keeps the ``int(num_points * important_ratio)``
    of them where ``|logit|`` is smallest, and adds ``num_points`` minus that many fresh uniform points.

    Args:
        mask_logits (Tensor): [n, h, w] predicted mask logits (read without gradient).
        num_points (int): p, points per mask.
        oversample_ratio (float): >= 1, candidates per point.
        important_ratio (float): in [0, 1], share of the points chosen by uncertainty.

    Returns:
        Tensor: [n, p, 2] points (x, y) in [0, 1], no gradient; the chosen ones first, in decreasing
        uncertainty, then the fresh ones. Random draws, in this order: ``paddle.rand([n, 1, p_over, 2])``,
        then ``paddle.rand([n, p - p_important, 2])`` if that is not empty (the official order and shapes).
    """
    num_masks = mask_logits.shape[0]
    num_oversample = int(num_points * oversample_ratio)
    num_important = int(num_points * important_ratio)
    num_random = num_points - num_important
    # [n, 1, p_over, 2] -> [n, p_over, 2]: the official shape of the draw, so the same seed gives the same points
    candidates = paddle.rand([num_masks, 1, num_oversample, 2]).squeeze(1)
    points = candidates[:, :0]
    if num_important > 0:
        # [n, h, w] -> [n, 1, p_over] -> [n, p_over]
        logits = point_sample(mask_logits.detach().unsqueeze(1), candidates)[:, 0]
        _, order = paddle.topk(-logits.abs(), num_important, axis=1)
        # [n, p_important] -> [n, p_important, 2]
        points = paddle.take_along_axis(candidates, order.unsqueeze(-1).tile([1, 1, 2]), axis=1)
    if num_random > 0:
        points = paddle.concat([points, paddle.rand([num_masks, num_random, 2]).astype(points.dtype)], axis=1)
    return points


def pairwise_mask_cost(pred_logits, tgt_masks):
    """Matching costs of every predicted mask with every gt mask, both read at the same p points.

    Args:
        pred_logits (Tensor): [m, p] predicted logits.
        tgt_masks (Tensor): [n, p] gt values in [0, 1], same dtype.

    Returns:
        (Tensor, Tensor): [m, n] mean binary cross-entropy over the points, and [m, n] dice loss
        ``1 - (2 sum(s t) + 1) / (sum s + sum t + 1)`` with s = sigmoid(logit).
    """
    num_points = pred_logits.shape[1]
    # BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0): all pairs by two matrix products
    pos = F.binary_cross_entropy_with_logits(pred_logits, paddle.ones_like(pred_logits), reduction='none')
    neg = F.binary_cross_entropy_with_logits(pred_logits, paddle.zeros_like(pred_logits), reduction='none')
    cost_bce = (paddle.matmul(pos, tgt_masks, transpose_y=True) +
                paddle.matmul(neg, 1 - tgt_masks, transpose_y=True)) / num_points
    prob = F.sigmoid(pred_logits)
    numerator = 2 * paddle.matmul(prob, tgt_masks, transpose_y=True)
    # [m, 1] + [1, n] -> [m, n]
    denominator = prob.sum(-1, keepdim=True) + tgt_masks.sum(-1).unsqueeze(0)
    cost_dice = 1 - (numerator + 1) / (denominator + 1)
    return cost_bce, cost_dice


def point_bce_loss(pred_logits, tgt_masks):
    """[n, p] logits and [n, p] targets in [0, 1] -> [n] binary cross-entropy averaged over the points."""
    return F.binary_cross_entropy_with_logits(pred_logits, tgt_masks, reduction='none').mean(1)


def dice_loss(pred_logits, tgt_masks):
    """[n, ...] logits and targets -> [n] dice loss ``1 - (2 sum(s t) + 1) / (sum s + sum t + 1)``.

    The +1 keeps it finite for empty masks: an empty target predicted empty costs 0.
    """
    prob = F.sigmoid(pred_logits).flatten(1)
    tgt = tgt_masks.flatten(1)
    numerator = 2 * (prob * tgt).sum(1)
    denominator = prob.sum(-1) + tgt.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def binary_mask_iou(pred_logits, tgt_masks, eps=1e-2):
    """IoU of binarised matched masks, the varifocal target of Mask-RT-DETR (official ``vfl_iou_type: mask``).

    The prediction is upsampled 2x (bilinear), the gt resized to that size (bilinear), and both binarised at
    0.5 (the prediction after a sigmoid), as the official code does.

    Args:
        pred_logits (Tensor): [n, h, w] predicted logits.
        tgt_masks (Tensor): [n, H, W] gt masks in [0, 1], same dtype.
        eps (float): added to the intersection and the union, so two empty masks have IoU 1.

    Returns:
        Tensor: [n] IoU in (0, 1], no gradient.
    """
    pred_logits, tgt_masks = pred_logits.detach(), tgt_masks.detach()
    # [n, h, w] -> [1, n, h, w] -> [1, n, 2h, 2w] -> [n, 2h, 2w]
    pred = F.interpolate(pred_logits.unsqueeze(0), scale_factor=2, mode='bilinear', align_corners=False).squeeze(0)
    tgt = F.interpolate(tgt_masks.unsqueeze(0), size=pred.shape[-2:], mode='bilinear', align_corners=False).squeeze(0)
    # sigmoid(x) > 0.5 rather than x > 0: the official test, which differs where sigmoid rounds to 0.5
    pred = (F.sigmoid(pred) > 0.5).astype(pred.dtype).flatten(1)
    tgt = (tgt > 0.5).astype(pred.dtype).flatten(1)
    inter = (pred * tgt).sum(1)
    union = pred.sum(1) + tgt.sum(1) - inter
    return (inter + eps) / (union + eps)
