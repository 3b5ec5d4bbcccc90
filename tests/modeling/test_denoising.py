"""Contrastive denoising group: shapes, positive indices, attention-mask block structure, empty batches."""
import numpy as np
import paddle

from ppdet_rtdetr.modeling.denoising import (denoising_attn_mask, get_contrastive_denoising_training_group,
                                             get_denoising_training_group)


def _gts(counts, k=5, seed=0):
    rng = np.random.default_rng(seed)
    cls = [paddle.to_tensor(rng.integers(0, k, (n, 1)).astype('int32')) for n in counts]
    box = [paddle.to_tensor(np.concatenate([rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.1, 0.3, (n, 2))], 1)
                            .astype('float32')) for n in counts]
    return cls, box


def _np_logit(x):
    x = np.clip(x, 0, 1)
    return np.log(np.maximum(x, 1e-5) / np.maximum(1 - x, 1e-5))


def test_group_layout_and_positive_indices():
    cls, box = _gts([3, 1, 0])
    embed = paddle.rand([5, 8])
    # without noise every slot is its gt: the layout can be written down
    dn_embed, dn_bbox_unact, mask, meta = get_contrastive_denoising_training_group(
        cls, box, num_classes=5, num_queries=7, class_embed=embed, num_denoising=10, label_noise_ratio=0.,
        box_noise_scale=0.)
    g, groups = 3, 10 // 3
    num_dn = 2 * g * groups
    assert meta['dn_num_group'] == groups and meta['dn_num_split'] == [num_dn, 7]
    # slot s holds padded gt s % g of its image (positive and negative copies alike); padding slots (image 1
    # after its one gt, all of image 2) hold the all-zero padding embedding and a zero box
    want_embed, want_box = np.zeros((3, num_dn, 8)), np.zeros((3, num_dn, 4))
    for i, c in enumerate(cls):
        for s in range(num_dn):
            if s % g < c.shape[0]:
                want_embed[i, s] = embed.numpy()[int(c.numpy()[s % g, 0])]
                want_box[i, s] = box[i].numpy()[s % g]
    np.testing.assert_array_equal(dn_embed.numpy(), want_embed)
    np.testing.assert_allclose(dn_bbox_unact.numpy(), _np_logit(want_box), rtol=1e-5, atol=1e-4)
    # positives: the first n_i slots of the positive half of every group
    want = [[grp * 2 * g + j for grp in range(groups) for j in range(n)] for n in (3, 1, 0)]
    assert [m.numpy().tolist() for m in meta['dn_positive_idx']] == want
    np.testing.assert_array_equal(mask.numpy(), denoising_attn_mask(g, groups, 7).numpy())


def test_attention_mask_block_structure():
    g, groups, nq = 2, 3, 4
    m = denoising_attn_mask(g, groups, nq).numpy()
    num_dn = 2 * g * groups
    for i in range(num_dn + nq):
        for j in range(num_dn + nq):
            if i >= num_dn:  # matching query: sees matching queries only
                want = j >= num_dn
            else:  # denoising query: its own group and the matching queries
                want = j >= num_dn or i // (2 * g) == j // (2 * g)
            assert m[i, j] == want, f'mask[{i}, {j}] = {m[i, j]}, want {want}'


def test_box_noise_keeps_positives_inside_and_pushes_negatives_out():
    paddle.seed(0)
    cls, box = _gts([4], seed=1)
    _, dn_bbox_unact, _, meta = get_contrastive_denoising_training_group(
        cls, box, 5, 7, paddle.rand([5, 8]), num_denoising=40, label_noise_ratio=0., box_noise_scale=1.0)
    dn = 1 / (1 + np.exp(-dn_bbox_unact.numpy()[0]))
    gt = box[0].numpy()
    g = 4
    checked = 0
    for q in range(dn.shape[0]):
        ref = gt[q % g]
        if np.any(dn[q, 2:] < 1e-4):
            continue  # corners crossed (x1 > x2): the official noise makes such degenerate negatives too
        checked += 1
        # each corner moves by |noise| * half the box size: < 1 for positives, in [1, 2) for negatives
        corners = np.concatenate([dn[q, :2] - dn[q, 2:] / 2, dn[q, :2] + dn[q, 2:] / 2])
        ref_corners = np.concatenate([ref[:2] - ref[2:] / 2, ref[:2] + ref[2:] / 2])
        rel = np.abs(corners - ref_corners) / np.tile(ref[2:] / 2, 2)
        if (q // g) % 2 == 0:
            assert rel.max() < 1 + 1e-4, f'positive query {q} moved {rel.max()}'
        else:
            # a corner clipped to the image border (1e-5 after the logit round trip) may move less
            clipped = (corners < 1e-4) | (corners > 1 - 1e-4)
            assert np.all((rel >= 1 - 1e-4) | clipped), \
                f'negative query {q} moved only {rel.min()}'
    assert checked > 40


def test_no_box_noise_returns_logit_space_boxes():
    cls, box = _gts([2])
    _, dn_bbox_unact, _, _ = get_contrastive_denoising_training_group(
        cls, box, 5, 7, paddle.rand([5, 8]), num_denoising=4, box_noise_scale=0.)
    got = 1 / (1 + np.exp(-dn_bbox_unact.numpy()[0, :2]))
    np.testing.assert_allclose(got, box[0].numpy(), atol=1e-5)


def test_batch_without_boxes_still_builds_one_group():
    cls, box = _gts([0, 0])
    dn_embed, dn_bbox_unact, mask, meta = get_contrastive_denoising_training_group(
        cls, box, 5, 7, paddle.rand([5, 8]), num_denoising=10)
    # g = 1 padding slot per image in 10 groups: 20 queries, all with the zero embedding and a zero box
    assert meta['dn_num_group'] == 10 and meta['dn_num_split'] == [20, 7]
    np.testing.assert_array_equal(dn_embed.numpy(), np.zeros((2, 20, 8)))
    np.testing.assert_allclose(dn_bbox_unact.numpy(), np.full((2, 20, 4), _np_logit(0.)), rtol=1e-6)
    assert [m.numpy().tolist() for m in meta['dn_positive_idx']] == [[], []]
    np.testing.assert_array_equal(mask.numpy(), denoising_attn_mask(1, 10, 7).numpy())


def test_plain_denoising_groups_hold_positives_only():
    paddle.seed(0)
    embed = paddle.randn([5, 8])
    gt_class = [paddle.to_tensor([[1], [4]], dtype='int32'), paddle.zeros([0, 1], 'int32')]
    gt_bbox = [paddle.to_tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4]]), paddle.zeros([0, 4])]
    dn_embed, dn_bbox_unact, mask, meta = get_denoising_training_group(gt_class, gt_bbox, 5, 3, embed, 7, 0., 0.)
    # g = 2, 7 // 2 = 3 groups of 2 queries each (no negatives), then 3 matching queries
    assert meta['dn_num_split'] == [6, 3] and meta['dn_num_group'] == 3
    np.testing.assert_array_equal(meta['dn_positive_idx'][0].numpy(), [0, 1, 2, 3, 4, 5])
    assert meta['dn_positive_idx'][1].shape == [0]
    group = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3])
    want = (group[:, None] == group[None, :]) | (group[None, :] == 3)
    np.testing.assert_array_equal(mask.numpy(), want)
    # without noise: the gt boxes (logit space) and label embeddings; the padding slot gets the zero embedding
    np.testing.assert_allclose(1 / (1 + np.exp(-dn_bbox_unact[0, 2:4].numpy())), gt_bbox[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(dn_embed[0, 1].numpy(), embed[4].numpy())
    assert float(dn_embed[1].abs().sum()) == 0
    # a batch without any box: one padding group (the same graph on every rank), no positives
    _, _, _, meta = get_denoising_training_group([gt_class[1]], [gt_bbox[1]], 5, 3, embed, 7, 0.5, 1.0)
    assert meta['dn_num_split'] == [7, 3] and meta['dn_positive_idx'][0].shape == [0]
