"""Denoising training groups, as small pure functions: contrastive (DINO) for RT-DETR, plain (DN-DETR, positives
only: `get_denoising_training_group`) for Mask-RT-DETR.

Every image's ground truths are padded to the batch maximum g and repeated in `num_group` groups; each group
holds g positive queries (boxes jittered inside the gt, labels flipped with probability
label_noise_ratio / 2) followed by g negative queries (boxes pushed outside). Denoising queries come first in
the decoder's query list, the n matching queries after them.

A batch without any box still gets one group of padding queries (g = 1): the graph is the same on every
data-parallel rank (a rank that skipped denoising would hang the others, RT-DETR #684), and the losses on
those queries only teach "background", as padding queries already do in a non-empty batch.
"""
import paddle
import paddle.nn.functional as F

from .box_ops import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh

__all__ = ['denoising_group_sizes', 'denoising_attn_mask', 'additive_attn_mask',
           'get_contrastive_denoising_training_group', 'get_denoising_training_group']


def denoising_group_sizes(num_gts, num_denoising):
    """(g, num_group): padded gts per image (>= 1) and groups, num_group = max(1, num_denoising // g)."""
    g = max(max(num_gts) if num_gts else 0, 1)
    return g, max(num_denoising // g, 1)


def denoising_attn_mask(g, num_group, num_queries, group_size=None):
    """Boolean [t, t] mask, t = group_size*num_group + num_queries; True = may attend.

    Matching queries cannot see denoising queries (they would leak the ground truth), and each denoising
    group sees only itself; every query sees all matching queries. A group holds `group_size` queries: 2*g
    (positive and negative copies, the default) or g (non-contrastive denoising).
    """
    group_size = 2 * g if group_size is None else group_size
    num_dn = group_size * num_group
    t = num_dn + num_queries
    idx = paddle.arange(t)
    # group id of each query: 0..num_group-1 for denoising, num_group for the matching part
    group = paddle.where(idx < num_dn, idx // group_size, paddle.full_like(idx, num_group))
    same_group = group.unsqueeze(1) == group.unsqueeze(0)
    key_is_matching = (idx >= num_dn).unsqueeze(0).expand([t, t])
    return paddle.logical_or(same_group, key_is_matching)


def additive_attn_mask(may_attend, dtype):
    """A boolean "may attend" mask [t, t] as the additive float mask attention takes: 0 where True, -inf where
    False, in `dtype`."""
    return paddle.where(may_attend, paddle.zeros(may_attend.shape, dtype),
                        paddle.full(may_attend.shape, float('-inf'), dtype))


def _padded_gts(gt_class, gt_bbox, num_gts, g, num_classes, dtype):
    """Every image's gts padded to g: classes int64 [b, g] (k, the padding embedding, in the padding slots),
    boxes [b, g, 4] of `dtype` (zeros there) and valid bool [b, g]."""
    cls_rows, box_rows, valid_rows = [], [], []
    for labels, boxes, n in zip(gt_class, gt_bbox, num_gts):
        cls_rows.append(paddle.concat([labels.reshape([-1]).astype('int64'),
                                       paddle.full([g - n], num_classes, 'int64')]))
        box_rows.append(paddle.concat([boxes.reshape([-1, 4]).astype(dtype), paddle.zeros([g - n, 4], dtype)]))
        valid_rows.append(paddle.arange(g) < n)
    return paddle.stack(cls_rows), paddle.stack(box_rows), paddle.stack(valid_rows)


def get_contrastive_denoising_training_group(gt_class, gt_bbox, num_classes, num_queries, class_embed,
                                             num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0):
    """Build the denoising queries of a batch.

    Args:
        gt_class (list[Tensor]): b int tensors [n_i, 1] of class indices in [0, num_classes).
        gt_bbox (list[Tensor]): b float tensors [n_i, 4], normalised cxcywh.
        num_classes (int): k; index k of the padded `class_embed` is an all-zero "padding" embedding.
        num_queries (int): matching queries after the denoising ones.
        class_embed (Tensor): [k, c] label embedding weight.
        num_denoising (int): target number of denoising queries (0 disables denoising: returns Nones).
        label_noise_ratio (float): a positive or negative query's label is replaced by a random class with
            probability label_noise_ratio / 2.
        box_noise_scale (float): box jitter in units of half the box size; 0 keeps the gt boxes.
    Returns:
        dn_embed [b, num_dn, c], dn_bbox_unact [b, num_dn, 4] (logit space), attn_mask bool [t, t]
        (True = may attend), dn_meta dict: dn_positive_idx (list of b int64 [n_i * num_group], group-major),
        dn_num_group, dn_num_split [num_dn, num_queries]. All None when num_denoising <= 0.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [int(c.shape[0]) for c in gt_class]
    b = len(num_gts)
    g, num_group = denoising_group_sizes(num_gts, num_denoising)
    c = class_embed.shape[-1]

    gt_class_g, gt_bbox_g, valid_g = _padded_gts(gt_class, gt_bbox, num_gts, g, num_classes, class_embed.dtype)
    # [b, g] -> [b, 2*g*num_group]: each group = g positive then g negative copies
    dn_class = gt_class_g.tile([1, 2 * num_group])
    dn_bbox = gt_bbox_g.tile([1, 2 * num_group, 1])
    valid = valid_g.tile([1, 2 * num_group])
    num_dn = 2 * g * num_group
    is_negative = ((paddle.arange(num_dn) // g) % 2 == 1).astype(dn_bbox.dtype)  # [num_dn]

    positive = paddle.logical_and(valid, is_negative.unsqueeze(0) == 0)
    dn_positive_idx = [paddle.nonzero(positive[i]).flatten().astype('int64') for i in range(b)]

    if label_noise_ratio > 0:
        flip = paddle.logical_and(paddle.rand(dn_class.shape) < label_noise_ratio * 0.5, valid)
        random_class = paddle.randint(0, num_classes, dn_class.shape, dtype='int64')
        dn_class = paddle.where(flip, random_class, dn_class)

    if box_noise_scale > 0:
        xyxy = cxcywh_to_xyxy(dn_bbox)
        half_wh = dn_bbox[..., 2:].tile([1, 1, 2]) * 0.5 * box_noise_scale  # [b, num_dn, 4]
        sign = paddle.randint(0, 2, dn_bbox.shape).astype(dn_bbox.dtype) * 2.0 - 1.0
        # positives move by < 1 half-size, negatives by 1..2 half-sizes (outside the gt)
        magnitude = paddle.rand(dn_bbox.shape, dtype=dn_bbox.dtype) + is_negative.reshape([1, -1, 1])
        xyxy = (xyxy + sign * magnitude * half_wh).clip(0.0, 1.0)
        dn_bbox = xyxy_to_cxcywh(xyxy)
    dn_bbox_unact = inverse_sigmoid(dn_bbox)

    # [k, c] + a zero row for the padding class
    embed = paddle.concat([class_embed, paddle.zeros([1, c], class_embed.dtype)])
    # [b*num_dn] -> [b, num_dn, c]
    dn_embed = F.embedding(dn_class.flatten(), embed).reshape([b, num_dn, c])
    attn_mask = denoising_attn_mask(g, num_group, num_queries)
    dn_meta = {'dn_positive_idx': dn_positive_idx, 'dn_num_group': num_group,
               'dn_num_split': [num_dn, num_queries]}
    return dn_embed, dn_bbox_unact, attn_mask, dn_meta


def get_denoising_training_group(gt_class, gt_bbox, num_classes, num_queries, class_embed, num_denoising=100,
                                 label_noise_ratio=0.5, box_noise_scale=1.0):
    """Non-contrastive (DN-DETR) denoising queries of Mask-RT-DETR: each group holds only the g positive copies.

    Labels flip to a random class with probability label_noise_ratio / 2; each box side moves by up to
    box_noise_scale half-sizes (centre) or sizes (width, height), without clipping, as the official
    ``get_denoising_training_group`` (ppdet/modeling/transformers/utils.py). The random numbers are drawn with the
    official shapes, dtypes and order (``rand`` [b * num_dn] for the flips, ``randint_like`` over the flipped
    entries, ``rand`` [b, num_dn, 4] for the boxes), so that under the same ``paddle.seed`` both give the same
    queries. A batch without any box gets one group of padding queries instead of none (see the module
    docstring; the official code skips denoising there).

    Args and Returns: as `get_contrastive_denoising_training_group`, with num_dn = g * num_group and
    dn_positive_idx the indices of the real (non-padding) queries.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [int(c.shape[0]) for c in gt_class]
    b = len(num_gts)
    g, num_group = denoising_group_sizes(num_gts, num_denoising)
    c = class_embed.shape[-1]
    num_dn = g * num_group

    gt_class_g, gt_bbox_g, valid_g = _padded_gts(gt_class, gt_bbox, num_gts, g, num_classes, class_embed.dtype)
    # [b, g] -> [b, g * num_group]
    dn_class = gt_class_g.tile([1, num_group])
    dn_bbox = gt_bbox_g.tile([1, num_group, 1])
    valid = valid_g.tile([1, num_group])
    dn_positive_idx = [paddle.nonzero(valid[i]).flatten().astype('int64') for i in range(b)]

    if label_noise_ratio > 0:
        flat_class = dn_class.flatten()  # [b * num_dn]
        flip = paddle.logical_and(paddle.rand(flat_class.shape) < label_noise_ratio * 0.5, valid.flatten())
        chosen = paddle.nonzero(flip).flatten()
        new_class = paddle.randint_like(chosen, 0, num_classes, dtype='int32')  # the official dtype
        dn_class = paddle.scatter(flat_class, chosen, new_class.astype('int64')).reshape([b, num_dn])

    if box_noise_scale > 0:
        # [b, num_dn, 4]: centre by up to half the size, size by up to the size
        diff = paddle.concat([dn_bbox[..., 2:] * 0.5, dn_bbox[..., 2:]], axis=-1) * box_noise_scale
        diff = diff * (paddle.rand(dn_bbox.shape).astype(dn_bbox.dtype) * 2.0 - 1.0)
        dn_bbox = dn_bbox + diff
    dn_bbox_unact = inverse_sigmoid(dn_bbox)

    embed = paddle.concat([class_embed, paddle.zeros([1, c], class_embed.dtype)])
    # [b*num_dn] -> [b, num_dn, c]
    dn_embed = F.embedding(dn_class.flatten(), embed).reshape([b, num_dn, c])
    attn_mask = denoising_attn_mask(g, num_group, num_queries, group_size=g)
    dn_meta = {'dn_positive_idx': dn_positive_idx, 'dn_num_group': num_group,
               'dn_num_split': [num_dn, num_queries]}
    return dn_embed, dn_bbox_unact, attn_mask, dn_meta
