"""One-to-one Hungarian matching of decoder queries to ground-truth boxes (DETR-style)."""
import numpy as np
import paddle
import paddle.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ppdet.core.workspace import register

from .box_ops import cxcywh_to_xyxy, pairwise_giou

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
    """Assigns each ground-truth box to one query, minimising a class + L1 + GIoU cost.

    The cost is computed without gradient for the whole batch at once ([b*q, sum n_i]) and then
    split per image, as DETR does; each image is solved with
    ``scipy.optimize.linear_sum_assignment``.

    Args:
        matcher_coeff (dict): weights of the cost terms, keys 'class', 'bbox' (L1 of normalised
            cxcywh boxes) and 'giou' (negative GIoU of the xyxy boxes).
        use_focal_loss (bool): True for sigmoid class scores, costed with the focal-loss
            difference ``pos - neg`` at the gt class; False for softmax scores, costed with
            ``-prob``. Shared with the criterion through the global config.
        alpha (float): focal cost alpha.
        gamma (float): focal cost gamma.

    Call args:
        boxes (Tensor): [b, q, 4] predicted boxes, normalised cxcywh in [0, 1].
        logits (Tensor): [b, q, k] class logits (pre-sigmoid/softmax).
        gt_bbox (list[Tensor]): b tensors [n_i, 4], normalised cxcywh.
        gt_class (list[Tensor]): b integer tensors [n_i, 1] of class ids in [0, k).

    Returns:
        list[tuple[Tensor, Tensor]]: for each image, ``(src_idx, tgt_idx)`` int64 tensors of
        length min(q, n_i): query indices (sorted ascending) and the gt indices they match.
        Both are empty for an image without gt.

    Raises:
        NonFiniteCostError: the cost has NaN / inf entries (non-finite predictions or gt boxes).
    """
    __shared__ = ['use_focal_loss']

    def __init__(self,
                 matcher_coeff={'class': 2, 'bbox': 5, 'giou': 2},
                 use_focal_loss=True,
                 alpha=0.25,
                 gamma=2.0):
        # a copy: ppdet's create() may hand over the live global-config dict
        self.matcher_coeff = dict(matcher_coeff)
        self.use_focal_loss = use_focal_loss
        self.alpha = alpha
        self.gamma = gamma

    def _class_cost(self, logits, tgt_ids):
        """[b*q, k] logits, [n] gt ids -> [b*q, n] class cost."""
        if not self.use_focal_loss:
            return -F.softmax(logits, axis=-1).gather(tgt_ids, axis=1)
        prob = F.sigmoid(logits).gather(tgt_ids, axis=1)
        # focal loss for "this query is the gt class" minus for "it is not"
        neg_cost = (1 - self.alpha) * prob**self.gamma * (-paddle.log(1 - prob + 1e-8))
        pos_cost = self.alpha * (1 - prob)**self.gamma * (-paddle.log(prob + 1e-8))
        return pos_cost - neg_cost

    @paddle.no_grad()
    def __call__(self, boxes, logits, gt_bbox, gt_class):
        bs, num_queries = boxes.shape[:2]
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
