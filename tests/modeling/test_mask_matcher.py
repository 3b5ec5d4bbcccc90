"""RTDETRHungarianMatcher with_mask: mask costs against numpy on the drawn points, brute-force optimum, the
random draws, and its refusals (the box-only matcher is tests/modeling/test_matcher.py)."""
import itertools

import numpy as np
import paddle
import pytest
from helpers.mask_numpy import np_bce, np_point_sample, np_sigmoid

from ppdet_rtdetr.modeling.matcher import RTDETRHungarianMatcher

MASK_ONLY = {'class': 0, 'bbox': 0, 'giou': 0, 'mask': 1, 'dice': 1}


def _case(rng, sizes, q=4, k=3, hw=(6, 8), stride=2):
    b = len(sizes)
    t = paddle.to_tensor
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (b, q, 2)), rng.uniform(0.1, 0.4, (b, q, 2))], -1)
    logits = rng.normal(0, 2, (b, q, k))
    masks = rng.normal(0, 3, (b, q) + hw)
    gt_bbox = [np.concatenate([rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))], -1) for n in sizes]
    gt_class = [rng.integers(0, k, (n, 1)).astype('int32') for n in sizes]
    gt_mask = [(rng.uniform(size=(n, hw[0] * stride, hw[1] * stride)) > 0.6).astype('float64') for n in sizes]
    return (t(boxes), t(logits), [t(g.reshape(-1, 4)) for g in gt_bbox], [t(c) for c in gt_class], t(masks),
            [t(m) for m in gt_mask])


@pytest.fixture
def float64_default():
    # the points are drawn in the default dtype: float64 keeps the numpy comparison tight
    before = paddle.get_default_dtype()
    paddle.set_default_dtype('float64')
    yield
    paddle.set_default_dtype(before)


def test_mask_cost_match_is_the_brute_force_optimum_of_the_numpy_cost(float64_default):
    rng = np.random.default_rng(0)
    sizes, num_points = [3, 2], 50
    boxes, logits, gt_bbox, gt_class, masks, gt_mask = _case(rng, sizes)
    matcher = RTDETRHungarianMatcher(MASK_ONLY, with_mask=True, num_sample_points=num_points)
    paddle.seed(4)
    out = matcher(boxes, logits, gt_bbox, gt_class, masks=masks, gt_mask=gt_mask)
    paddle.seed(4)
    points = paddle.rand([2, 1, num_points, 2]).numpy()[:, 0]  # one set per image, shared by its queries and gts
    for i, (src, tgt) in enumerate(out):
        pred = [np_point_sample(m, points[i]) for m in masks.numpy()[i]]
        gts = [np_point_sample(m, points[i]) for m in gt_mask[i].numpy()]
        cost = np.array([[np_bce(x, y).mean() +
                          1 - (2 * (np_sigmoid(x) * y).sum() + 1) / (np_sigmoid(x).sum() + y.sum() + 1)
                          for y in gts] for x in pred])
        best = min(sum(cost[s, t] for t, s in enumerate(perm))
                   for perm in itertools.permutations(range(len(pred)), len(gts)))
        got = sum(cost[s, t] for s, t in zip(src.numpy(), tgt.numpy()))
        assert abs(got - best) < 1e-9, f'image {i}: matched cost {got} vs brute-force {best}'
        assert sorted(tgt.numpy().tolist()) == list(range(sizes[i]))


@pytest.mark.parametrize('other_sizes', [[2], [0], [5, 1]])
def test_first_image_matches_as_alone_whatever_follows(other_sizes):
    # image 0 reads the first points of the draw in any batch: its match may not depend on the others
    rng = np.random.default_rng(4)
    batch = _case(rng, [3] + other_sizes)
    matcher = RTDETRHungarianMatcher({'class': 2, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}, with_mask=True,
                                     num_sample_points=40)
    paddle.seed(1)
    together = matcher(*batch[:4], masks=batch[4], gt_mask=batch[5])[0]
    paddle.seed(1)
    alone = matcher(batch[0][:1], batch[1][:1], batch[2][:1], batch[3][:1], masks=batch[4][:1],
                    gt_mask=batch[5][:1])[0]
    for got, want in zip(together, alone):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_masks_decide_when_boxes_and_classes_tie(float64_default):
    # identical boxes and scores; query 0 predicts gt 1's mask, query 2 gt 0's
    gt = np.zeros((2, 8, 8))
    gt[0, :4] = 1
    gt[1, 4:] = 1
    masks = np.full((1, 3, 8, 8), -6.)
    masks[0, 0] = np.where(gt[1] > 0, 6., -6.)
    masks[0, 2] = np.where(gt[0] > 0, 6., -6.)
    matcher = RTDETRHungarianMatcher({'class': 2, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}, with_mask=True,
                                     num_sample_points=200)
    src, tgt = matcher(paddle.full([1, 3, 4], 0.5), paddle.zeros([1, 3, 2]), [paddle.full([2, 4], 0.5)],
                       [paddle.to_tensor([[0], [0]])], masks=paddle.to_tensor(masks),
                       gt_mask=[paddle.to_tensor(gt)])[0]
    assert src.numpy().tolist() == [0, 2] and tgt.numpy().tolist() == [1, 0]


@pytest.mark.parametrize('sizes,draws', [([0, 0], False), ([0, 2], True)])
def test_one_draw_per_call_and_none_without_gt(sizes, draws):
    rng = np.random.default_rng(1)
    boxes, logits, gt_bbox, gt_class, masks, gt_mask = _case(rng, sizes)
    matcher = RTDETRHungarianMatcher(MASK_ONLY, with_mask=True, num_sample_points=30)
    paddle.seed(9)
    matcher(boxes, logits, gt_bbox, gt_class, masks=masks.astype('float32'), gt_mask=gt_mask)
    after = paddle.rand([3]).numpy()
    paddle.seed(9)
    if draws:
        paddle.rand([2, 1, 30, 2])
    np.testing.assert_array_equal(after, paddle.rand([3]).numpy())


def test_without_masks_the_mask_coefficients_change_nothing():
    rng = np.random.default_rng(2)
    boxes, logits, gt_bbox, gt_class, masks, gt_mask = _case(rng, [3, 1])
    coeff = {'class': 2, 'bbox': 5, 'giou': 2}
    plain = RTDETRHungarianMatcher(coeff)(boxes, logits, gt_bbox, gt_class)
    extra = RTDETRHungarianMatcher(dict(coeff, mask=5, dice=5))(boxes, logits, gt_bbox, gt_class, masks=masks,
                                                                  gt_mask=gt_mask)
    for (s0, t0), (s1, t1) in zip(plain, extra):
        np.testing.assert_array_equal(s0.numpy(), s1.numpy())
        np.testing.assert_array_equal(t0.numpy(), t1.numpy())


def test_refusals_are_named():
    with pytest.raises(ValueError) as err:
        RTDETRHungarianMatcher({'class': 2, 'bbox': 5, 'giou': 2, 'mask': 5}, with_mask=True)
    assert str(err.value) == ("RTDETRHungarianMatcher: with_mask=True needs matcher_coeff keys ['dice'], "
                              "got matcher_coeff={'class': 2, 'bbox': 5, 'giou': 2, 'mask': 5}")
    rng = np.random.default_rng(3)
    boxes, logits, gt_bbox, gt_class, _, _ = _case(rng, [1])
    with pytest.raises(ValueError) as err:
        RTDETRHungarianMatcher(MASK_ONLY, with_mask=True)(boxes, logits, gt_bbox, gt_class)
    assert str(err.value) == ('RTDETRHungarianMatcher: with_mask=True needs masks [b, q, h, w] and gt_mask '
                              '(b tensors [n_i, H, W]), got masks=None, gt_mask=None')
