"""Distinct query selection: peaks of the encoder's score map go first.

RT-DETR picks its n decoder queries as the top-n memory tokens by class score. A large object covers many
neighbouring tokens of one level with nearly the same score and nearly the same box, so several of its tokens
become queries, and the decoder has to learn to suppress the copies; one-to-one matching learns that last
(on a small dataset, duplicate boxes stay after the AP has converged). Keeping the queries distinct at the
source is the idea of DDQ (Zhang et al., "Dense Distinct Queries for End-to-End Object Detection", CVPR 2023,
which runs class-agnostic NMS on the proposals); here distinctness is CenterNet's peak test, a max-pool on
each level's score map: a token whose score is below the maximum of its k x k neighbourhood on its own level
ranks after every peak. Selection only (no gradient flows through top-k); tokens are not dropped, so n queries
are always selected.
"""
import paddle
import paddle.nn.functional as F

__all__ = ['rank_peaks_first']

# lowers a non-peak below every peak: logits of a trained score head stay far inside +-1e4
NON_PEAK_OFFSET = 1e4


def rank_peaks_first(scores, spatial_shapes, window):
    """Scores to rank the memory tokens by, with the non-peak tokens of each level moved below all peaks.

    Args:
        scores (Tensor): [b, l] one score per token (the max class logit), levels concatenated in
            `spatial_shapes` order, row-major within a level.
        spatial_shapes (list[tuple[int, int]]): (h_i, w_i) of each level; sum of h_i * w_i is l.
        window (int): odd k; a token is a peak if no token of its k x k neighbourhood (clipped at the map's
            border) on the same level scores higher. Ties are all peaks.
    Returns:
        Tensor: [b, l], `scores` at the peaks and `scores - 1e4` elsewhere (order within each group kept).
    """
    ranked, start = [], 0
    for h, w in spatial_shapes:
        level = scores[:, start:start + h * w].reshape([-1, 1, h, w])  # [b, h*w] -> [b, 1, h, w]
        # max pooling ignores its padding, so a border token is compared with its neighbours inside the map
        peak = F.max_pool2d(level, window, stride=1, padding=window // 2) == level
        ranked.append(paddle.where(peak, level, level - NON_PEAK_OFFSET).flatten(1))  # [b, h*w]
        start += h * w
    return paddle.concat(ranked, axis=1)
