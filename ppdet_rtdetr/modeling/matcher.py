"""One-to-one Hungarian matching of decoder queries to ground-truth boxes (DETR-style), optionally with masks."""
import numpy as np
import paddle
import paddle.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ppdet.core.workspace import register

from .box_ops import cxcywh_to_xyxy, pairwise_giou
from .mask_ops import pairwise_mask_cost, point_sample

__all__ = ['NonFiniteCostError', 'RTDETRHungarianMatcher']


class NonFiniteCostError(FloatingPointError):
    """The matching cost holds NaN / inf, which the assignment solver cannot use; the message counts them."""


def _empty_index():
    return paddle.zeros([0], dtype='int64')


def _check_finite(cost, image):
    """Raises ``NonFiniteCostError`` naming the counts unless every entry of ``cost`` (numpy [q, n_i], the cost of
    batch image ``image``) is finite: scipy's own error ("matrix contains invalid numeric entries") names neither
    the matrix nor the cause."""
    if np.isfinite(cost).all():
        return
    raise NonFiniteCostError("the matcher's cost matrix of image {} ([q, n_i] = {}): {} of {} values NaN, {} inf"
                             .format(image, list(cost.shape), int(np.isnan(cost).sum()), cost.size,
                                     int(np.isinf(cost).sum())))


@register
class RTDETRHungarianMatcher(object):
    """Assigns each ground-truth box to one query, minimising a class + L1 + GIoU (+ mask BCE + dice) cost.

    The cost is computed without gradient for the whole batch at once ([b*q, sum n_i]) and then
    split per image, as DETR does; each image is solved with
    ``scipy.optimize.linear_sum_assignment``.

    Args:
        matcher_coeff (dict): weights of the cost terms, keys 'class', 'bbox' (L1 of normalised
            cxcywh boxes) and 'giou' (negative GIoU of the xyxy boxes); 'mask' and 'dice' are read only
            with ``with_mask``.
        use_focal_loss (bool): True for sigmoid class scores, costed with the focal-loss
            difference ``pos - neg`` at the gt class; False for softmax scores, costed with
            ``-prob``. Shared with the criterion through the global config.
        alpha (float): focal cost alpha.
        gamma (float): focal cost gamma.
        with_mask (bool): add the mask costs of Mask-RT-DETR (Mask2Former's): ``matcher_coeff['mask']`` times
            the mean BCE and ``matcher_coeff['dice']`` times the dice loss of the mask logits against the gt
            masks, read at ``num_sample_points`` uniform random points per image, shared by its queries and
            gts. The points are one ``paddle.rand([b, 1, num_sample_points, 2])`` draw per call (none when the
            batch has no gt), as in the official matcher. Shared with the criterion through the global config.
        num_sample_points (int): points per image of the mask costs.

    Call args:
        boxes (Tensor): [b, q, 4] predicted boxes, normalised cxcywh in [0, 1].
        logits (Tensor): [b, q, k] class logits (pre-sigmoid/softmax).
        gt_bbox (list[Tensor]): b tensors [n_i, 4], normalised cxcywh.
        gt_class (list[Tensor]): b integer tensors [n_i, 1] of class ids in [0, k).
        masks (Tensor|None): [b, q, h, w] mask logits (``with_mask`` only).
        gt_mask (list[Tensor]|None): b tensors [n_i, H, W] of {0, 1} gt masks over the same (padded) image
            extent as ``masks``, H and W the same for every image (``with_mask`` only).

    Returns:
        list[tuple[Tensor, Tensor]]: for each image, ``(src_idx, tgt_idx)`` int64 tensors of
        length min(q, n_i): query indices (sorted ascending) and the gt indices they match.
        Both are empty for an image without gt.

    Raises:
        NonFiniteCostError: the cost has NaN / inf entries (non-finite predictions or gt boxes).
        ValueError: at construction, if ``with_mask`` and ``matcher_coeff`` lacks 'mask' or 'dice';
            at a call, if ``with_mask`` and ``masks`` or ``gt_mask`` is None.
    """
    __shared__ = ['use_focal_loss', 'with_mask', 'num_sample_points']

    def __init__(self,
                 matcher_coeff={'class': 2, 'bbox': 5, 'giou': 2},
                 use_focal_loss=True,
                 alpha=0.25,
                 gamma=2.0,
                 with_mask=False,
                 num_sample_points=12544):
        # a copy: ppdet's create() may hand over the live global-config dict
        self.matcher_coeff = dict(matcher_coeff)
        missing = [k for k in ('mask', 'dice') if with_mask and k not in self.matcher_coeff]
        if missing:
            raise ValueError(f'RTDETRHungarianMatcher: with_mask=True needs matcher_coeff keys {missing}, '
                             f'got matcher_coeff={self.matcher_coeff}')
        self.use_focal_loss = use_focal_loss
        self.alpha = alpha
        self.gamma = gamma
        self.with_mask = with_mask
        self.num_sample_points = num_sample_points

    def _class_cost(self, logits, tgt_ids):
        """[b*q, k] logits, [n] gt ids -> [b*q, n] class cost."""
        if not self.use_focal_loss:
            return -F.softmax(logits, axis=-1).gather(tgt_ids, axis=1)
        prob = F.sigmoid(logits).gather(tgt_ids, axis=1)
        # focal loss for "this query is the gt class" minus for "it is not"
        neg_cost = (1 - self.alpha) * prob**self.gamma * (-paddle.log(1 - prob + 1e-8))
        pos_cost = self.alpha * (1 - prob)**self.gamma * (-paddle.log(prob + 1e-8))
        return pos_cost - neg_cost

    def _mask_cost(self, masks, gt_mask, sizes):
        """[b, q, h, w] logits, b gt masks [n_i, H, W] -> [b*q, sum n_i] BCE and dice costs."""
        bs = masks.shape[0]
        # one set of points per image, for its queries and its gts: [b, 1, p, 2] -> [b, p, 2]
        points = paddle.rand([bs, 1, self.num_sample_points, 2]).squeeze(1)
        # [b, q, p] -> [b*q, p]
        out_mask = point_sample(masks, points).flatten(0, 1)
        # the points of each gt's image: [sum n_i, p, 2]
        gt_points = paddle.concat([points[i:i + 1].tile([n, 1, 1]) for i, n in enumerate(sizes) if n > 0])
        # [sum n_i, H, W] -> [sum n_i, 1, p] -> [sum n_i, p]
        tgt_mask = point_sample(paddle.concat(gt_mask).astype(out_mask.dtype).unsqueeze(1), gt_points)[:, 0]
        return pairwise_mask_cost(out_mask, tgt_mask)

    @paddle.no_grad()
    def __call__(self, boxes, logits, gt_bbox, gt_class, masks=None, gt_mask=None):
        bs, num_queries = boxes.shape[:2]
        if self.with_mask and (masks is None or gt_mask is None):
            raise ValueError('RTDETRHungarianMatcher: with_mask=True needs masks [b, q, h, w] and gt_mask '
                             f'(b tensors [n_i, H, W]), got masks={None if masks is None else list(masks.shape)}, '
                             f'gt_mask={None if gt_mask is None else len(gt_mask)}')
        sizes = [int(g.shape[0]) for g in gt_bbox]
        if sum(sizes) == 0:
            return [(_empty_index(), _empty_index()) for _ in range(bs)]

        # [b, q, k] -> [b*q, k]; [b, q, 4] -> [b*q, 4]
        out_logits = logits.detach().flatten(0, 1)
        out_bbox = boxes.detach().flatten(0, 1)
        # all targets of the batch side by side: [sum n_i], [sum n_i, 4]
        tgt_ids = paddle.concat([c.reshape([-1]) for c in gt_class]).astype('int64')
        tgt_bbox = paddle.concat(gt_bbox).astype(out_bbox.dtype)

        cost_class = self._class_cost(out_logits, tgt_ids)
        # [b*q, 1, 4] - [1, sum n_i, 4] -> [b*q, sum n_i]
        cost_bbox = (out_bbox.unsqueeze(1) - tgt_bbox.unsqueeze(0)).abs().sum(-1)
        cost_giou = -pairwise_giou(cxcywh_to_xyxy(out_bbox), cxcywh_to_xyxy(tgt_bbox))
        cost = (self.matcher_coeff['bbox'] * cost_bbox +
                self.matcher_coeff['class'] * cost_class +
                self.matcher_coeff['giou'] * cost_giou)
        if self.with_mask:
            # in the boxes' dtype: outside AMP's float16, whose BCE sums over thousands of points would be coarse
            with paddle.amp.auto_cast(enable=False):
                cost_mask, cost_dice = self._mask_cost(masks.detach().astype(out_bbox.dtype), gt_mask, sizes)
            cost = cost + self.matcher_coeff['mask'] * cost_mask + self.matcher_coeff['dice'] * cost_dice
        # [b*q, sum n_i] -> [b, q, sum n_i]; image i only competes for its own targets
        cost = cost.reshape([bs, num_queries, -1]).numpy()
        splits = np.cumsum(sizes)[:-1]

        indices = []
        for i, cost_i in enumerate(np.split(cost, splits, axis=-1)):
            if sizes[i] == 0:
                indices.append((_empty_index(), _empty_index()))
                continue
            # only image i's own block is solved: that is the part checked (1/b of the matrix)
            _check_finite(cost_i[i], i)
            src, tgt = linear_sum_assignment(cost_i[i])
            # paddle.assign, not paddle.to_tensor: in Paddle 3.3 every to_tensor call leaks ~120 bytes of host
            # memory (benchmarks/memory_growth.py), and this runs for every image of every step
            indices.append((paddle.assign(src.astype('int64')), paddle.assign(tgt.astype('int64'))))
        return indices
