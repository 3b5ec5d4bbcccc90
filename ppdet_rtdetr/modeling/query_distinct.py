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

Distinct queries can still converge: the decoder moves two of them onto one object. DDQ keeps them apart in the
decoder too, with NMS on each layer's boxes; `drop_copies` is that step (Fast NMS again) and `cap_copies` takes
a dropped query's score out of the later layers' outputs.
"""
import paddle

from .box_ops import cxcywh_to_xyxy, pairwise_iou

__all__ = ['select_distinct', 'drop_copies', 'cap_copies']

# copies lose their place to every distinct token: logits of a trained score head stay far inside +-1e4
COPY_OFFSET = 1e4
# a dropped decoder query's logits are capped here: sigmoid(-10) = 4.5e-5 is below any draw threshold and puts
# it after every live query the post-process ranks, while a loss on it (if the matcher still needs it) stays of
# the usual size
COPY_LOGIT = -10.


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


def drop_copies(scores, boxes, iou_threshold, alive=None):
    """The decoder queries that stay alive after one more layer: Fast NMS among the live ones.

    A live query whose box overlaps a better-scored live query's box by IoU > `iou_threshold` is dropped (even if
    that better one is dropped by this call too, as in Fast NMS); a query dropped at an earlier layer stays
    dropped and drops no other.

    Args:
        scores (Tensor): [b, n] one score per query (its max class logit).
        boxes (Tensor): [b, n, 4] the layer's boxes, cxcywh.
        iou_threshold (float): IoU above which a query is a copy of a better-scored one.
        alive (Tensor|None): bool [b, n] from the previous layer; None: every query is alive.
    Returns:
        Tensor: bool [b, n].
    """
    scores = scores.detach()
    boxes = cxcywh_to_xyxy(boxes.detach())  # [b, n, 4]
    iou, _ = pairwise_iou(boxes, boxes)  # [b, n, n]
    better = scores.unsqueeze(1) > scores.unsqueeze(2)  # [b, j, k]: query k scores above query j
    if alive is not None:
        better = paddle.logical_and(better, alive.unsqueeze(1))
    copy = (iou * better.astype(iou.dtype)).max(axis=2) > iou_threshold  # [b, n]
    return paddle.logical_not(copy) if alive is None else paddle.logical_and(alive, paddle.logical_not(copy))


def cap_copies(logits, alive, num_dn=0):
    """logits [b, num_dn + n, k] with the dropped queries' logits capped at COPY_LOGIT; alive bool [b, n] covers
    the last n queries (the first num_dn are denoising queries, left as they are)."""
    matching = logits[:, num_dn:] if num_dn else logits  # [b, n, k]
    capped = paddle.where(alive.unsqueeze(-1), matching, matching.clip(max=COPY_LOGIT))
    return paddle.concat([logits[:, :num_dn], capped], axis=1) if num_dn else capped
