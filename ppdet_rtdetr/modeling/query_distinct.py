"""Distinct query selection: a token whose box nearly repeats a better-scored token's box ranks last.

RT-DETR picks its n decoder queries as the top-n memory tokens by class score. A large object covers many
tokens of one level, and is seen again on the other levels, each with nearly the same score and, once the
encoder has learnt its boxes, nearly the same box; so several of them become queries, near-copies that the
one-to-one matching must teach the decoder to suppress. That is learned last (on a small dataset duplicate
boxes remain after the AP has converged). DDQ (Zhang et al., "Dense Distinct Queries for End-to-End Object
Detection", CVPR 2023) keeps the queries distinct at the source with class-agnostic NMS on the proposals; here
the suppression is "Fast NMS" (Bolya et al., YOLACT, ICCV 2019), a single matrix operation that exports like
any other op: a token overlapping a better-scored one by more than the threshold ranks after every token that
does not. Selection only (indices; no gradient flows through it), and n queries are always selected.
"""
import paddle

from .box_ops import cxcywh_to_xyxy, pairwise_iou

__all__ = ['select_distinct']

# copies lose their place to every distinct token: logits of a trained score head stay far inside +-1e4
COPY_OFFSET = 1e4


def select_distinct(scores, boxes, num_queries, iou_threshold):
    """Indices of the n selected tokens, distinct ones first.

    Every token is compared with the m = min(l, 4n) best-scored tokens (the ones that can suppress it: a copy's
    better twin is among them unless the n places go to more than four near-copies per object): a token whose
    box overlaps a better-scored one of them by IoU > `iou_threshold` is a copy (Fast NMS: even if that better
    one is itself a copy). Copies rank after every distinct token. Cost: a [b, l, m] IoU.

    Args:
        scores (Tensor): [b, l] one score per token (the max class logit).
        boxes (Tensor): [b, l, 4] the tokens' boxes, cxcywh (the encoder's sigmoid boxes).
        num_queries (int): n <= l.
        iou_threshold (float): IoU above which a token is a copy of a better-scored one.
    Returns:
        Tensor: int64 [b, n], token indices; the distinct tokens by score, then (if fewer than n) the copies.
    """
    num_tokens = scores.shape[1]  # a shape tensor when a dynamic-size export traces this
    want = 4 * num_queries
    m = min(num_tokens, want) if isinstance(num_tokens, int) else paddle.minimum(num_tokens, paddle.to_tensor(want))
    scores = scores.detach()
    best_scores, best = paddle.topk(scores, m, axis=1)  # [b, m]
    boxes = cxcywh_to_xyxy(boxes.detach())  # [b, l, 4]
    iou, _ = pairwise_iou(boxes, paddle.take_along_axis(boxes, best.unsqueeze(-1), axis=1))  # [b, l, m]
    better = (best_scores.unsqueeze(1) > scores.unsqueeze(2)).astype(iou.dtype)  # [b, l, m]: best i above token j
    copy = (iou * better).max(axis=2) > iou_threshold  # [b, l]
    _, ind = paddle.topk(paddle.where(copy, scores - COPY_OFFSET, scores), num_queries, axis=1)  # [b, n]
    return ind
