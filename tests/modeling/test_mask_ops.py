"""mask_ops against numpy formulas (tests/helpers/mask_numpy.py and here): bilinear point reads, BCE / dice
costs and losses, mask IoU, and the uncertainty sampling's selection rule and random draws."""
import numpy as np
import paddle
import pytest
from helpers.mask_numpy import np_bce, np_point_sample, np_sigmoid

from ppdet_rtdetr.modeling.mask_ops import (binary_mask_iou, dice_loss, pairwise_mask_cost, point_bce_loss,
                                            point_sample, uncertain_points)


def test_point_sample_is_bilinear_between_pixel_centres():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 3, 5, 7))
    # inside, on the border band, and outside the image
    points = np.concatenate([rng.uniform(0, 1, (2, 9, 2)), rng.uniform(-0.2, 1.2, (2, 4, 2))], 1)
    got = point_sample(paddle.to_tensor(feats), paddle.to_tensor(points)).numpy()
    assert got.shape == (2, 3, 13)
    want = np.stack([np.stack([np_point_sample(feats[i, c], points[i]) for c in range(3)]) for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                               err_msg=f'max err {np.abs(got - want).max()}')


def test_point_sample_at_a_pixel_centre_reads_that_pixel():
    img = np.arange(12, dtype='float64').reshape(1, 1, 3, 4)
    points = np.array([[[(2 + 0.5) / 4, (1 + 0.5) / 3]]])
    assert point_sample(paddle.to_tensor(img), paddle.to_tensor(points)).numpy().item() == img[0, 0, 1, 2]


def test_pairwise_cost_equals_per_pair_formulas():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4, 50))
    tgt = (rng.uniform(size=(3, 50)) > 0.5).astype('float64')
    bce, dice = pairwise_mask_cost(paddle.to_tensor(logits), paddle.to_tensor(tgt))
    p = np_sigmoid(logits)
    want_bce = np.array([[np_bce(logits[m], tgt[n]).mean() for n in range(3)] for m in range(4)])
    want_dice = np.array([[1 - (2 * (p[m] * tgt[n]).sum() + 1) / (p[m].sum() + tgt[n].sum() + 1)
                           for n in range(3)] for m in range(4)])
    np.testing.assert_allclose(bce.numpy(), want_bce, rtol=1e-12)
    np.testing.assert_allclose(dice.numpy(), want_dice, rtol=1e-12)
    # the aligned losses are the diagonal of the pairwise costs
    np.testing.assert_allclose(point_bce_loss(paddle.to_tensor(logits[:3]), paddle.to_tensor(tgt)).numpy(),
                               np.diag(want_bce[:3]), rtol=1e-12)
    np.testing.assert_allclose(dice_loss(paddle.to_tensor(logits[:3]), paddle.to_tensor(tgt)).numpy(),
                               np.diag(want_dice[:3]), rtol=1e-12)


def test_dice_of_a_confident_exact_prediction_is_zero_and_of_its_complement_near_one():
    tgt = np.zeros((1, 6, 8))
    tgt[0, 1:4, 2:7] = 1
    exact = paddle.to_tensor(np.where(tgt > 0, 40., -40.))
    assert dice_loss(exact, paddle.to_tensor(tgt)).item() < 1e-12
    # the complement: no overlap, and |s| + |t| covers every pixel once; the +1 smoothing leaves 1 - 1 / (hw + 1)
    np.testing.assert_allclose(dice_loss(-exact, paddle.to_tensor(tgt)).item(), 1 - 1 / (tgt.size + 1), rtol=1e-9)


def test_mask_iou_of_blocks():
    h, w = 6, 8
    pred = np.full((2, h, w), -5.)
    pred[:, :, :w // 2] = 5.  # left half
    tgt = np.zeros((2, 2 * h, 2 * w))  # at the 2x size the prediction is upsampled to: no resize
    tgt[0, :, :w] = 1  # the same left half
    tgt[1, :h, :] = 1  # top half: a quarter of the image in common, three quarters in the union
    iou = binary_mask_iou(paddle.to_tensor(pred), paddle.to_tensor(tgt)).numpy()
    quarter = h * w  # pixels of a quarter of the 2x image
    np.testing.assert_allclose(iou, [1., (quarter + 1e-2) / (3 * quarter + 1e-2)], rtol=1e-12)
    # a gt at another resolution is resized to the prediction's 2x size before the threshold
    big = np.kron(tgt, np.ones((1, 2, 2)))
    np.testing.assert_allclose(binary_mask_iou(paddle.to_tensor(pred), paddle.to_tensor(big)).numpy(), iou)


@pytest.mark.parametrize('num_points,ratio', [(20, 0.75), (7, 0.5), (8, 1.0), (8, 0.0)])
def test_uncertain_points_keep_the_most_uncertain_candidates_then_fresh_ones(num_points, ratio):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (3, 5, 6))
    num_over, num_imp = int(num_points * 3.0), int(num_points * ratio)
    paddle.seed(7)
    got = uncertain_points(paddle.to_tensor(logits), num_points, 3.0, ratio).numpy()
    after = paddle.rand([4]).numpy()
    # the same draws by hand: candidates [n, 1, p_over, 2], then (if any) fresh points [n, p - p_imp, 2]
    paddle.seed(7)
    cand = paddle.rand([3, 1, num_over, 2]).numpy()[:, 0].astype('float64')
    fresh = paddle.rand([3, num_points - num_imp, 2]).numpy() if num_points > num_imp else None
    np.testing.assert_array_equal(after, paddle.rand([4]).numpy(), err_msg='the draws differ in number or shape')
    assert got.shape == (3, num_points, 2) and (got >= 0).all() and (got <= 1).all()
    for i in range(3):
        uncertainty = -np.abs(np_point_sample(logits[i], cand[i]))
        chosen = np.argsort(-uncertainty, kind='stable')[:num_imp]
        np.testing.assert_allclose(got[i, :num_imp], cand[i, chosen], rtol=1e-6)
        if fresh is not None:
            np.testing.assert_array_equal(got[i, num_imp:], fresh[i])
