"""box_ops against slow pure-python formulas written here, plus round trips and degenerate boxes."""
import math

import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling import box_ops


def _random_xyxy(rng, n, min_size=0.01):
    xy = rng.uniform(0, 0.8, size=(n, 2))
    wh = rng.uniform(min_size, 0.5, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _ref_overlap(a, b, mode):
    """One pair of xyxy boxes, written out scalar by scalar from the papers' definitions."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / union
    if mode == 'iou':
        return iou
    cw = max(ax2, bx2) - min(ax1, bx1)
    ch = max(ay2, by2) - min(ay1, by1)
    if mode == 'giou':
        return iou - (cw * ch - union) / (cw * ch)
    rho2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2)**2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2)**2
    diou = iou - rho2 / (cw**2 + ch**2)
    if mode == 'diou':
        return diou
    v = 4 / math.pi**2 * (math.atan((bx2 - bx1) / (by2 - by1)) -
                          math.atan((ax2 - ax1) / (ay2 - ay1)))**2
    # identical boxes: v = 0 and 1 - iou = 0, and the penalty alpha * v is 0 whatever alpha is
    alpha = v / (1 - iou + v) if v > 0 else 0.0
    return diou - alpha * v


def _pairwise_iou_only(a, b):
    return box_ops.pairwise_iou(a, b)[0]


def _t(x, dtype='float64'):
    return paddle.to_tensor(np.asarray(x, dtype=dtype))


def test_cxcywh_xyxy_round_trip_and_values():
    rng = np.random.default_rng(0)
    cxcywh = rng.uniform(0.1, 0.9, size=(2, 5, 4))
    xyxy = box_ops.cxcywh_to_xyxy(_t(cxcywh)).numpy()
    ref = np.stack([cxcywh[..., 0] - cxcywh[..., 2] / 2, cxcywh[..., 1] - cxcywh[..., 3] / 2,
                    cxcywh[..., 0] + cxcywh[..., 2] / 2, cxcywh[..., 1] + cxcywh[..., 3] / 2], -1)
    np.testing.assert_allclose(xyxy, ref, rtol=0, atol=1e-12, err_msg='cxcywh_to_xyxy')
    back = box_ops.xyxy_to_cxcywh(_t(xyxy)).numpy()
    err = np.abs(back - cxcywh).max()
    assert err < 1e-12, f'round trip max err {err}'


def test_inverse_sigmoid_clips_then_inverts():
    x = np.array([-0.5, 0.0, 1e-7, 0.25, 0.5, 0.9, 1.0, 1.5])
    got = box_ops.inverse_sigmoid(_t(x)).numpy()
    xc = np.clip(x, 0, 1)
    ref = np.log(np.maximum(xc, 1e-5) / np.maximum(1 - xc, 1e-5))
    err = np.abs(got - ref).max()
    assert err < 1e-12, f'inverse_sigmoid max err {err}'
    # interior points invert the sigmoid exactly
    inner = 1 / (1 + np.exp(-got[3:6]))
    np.testing.assert_allclose(inner, x[3:6], rtol=1e-12,
                               err_msg='sigmoid(inverse_sigmoid(x)) != x')


def test_box_area_and_pairwise_iou_giou_match_reference():
    rng = np.random.default_rng(1)
    a, b = _random_xyxy(rng, 6), _random_xyxy(rng, 4)
    # one exact duplicate and one disjoint box exercise iou == 1 and negative giou
    b[0] = a[2]
    b[1] = [0.95, 0.95, 0.99, 0.99]
    a[0] = [0.0, 0.0, 0.05, 0.05]
    area = box_ops.box_area(_t(a)).numpy()
    np.testing.assert_allclose(area, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), rtol=1e-12)
    iou, union = box_ops.pairwise_iou(_t(a), _t(b))
    giou = box_ops.pairwise_giou(_t(a), _t(b)).numpy()
    ref_iou = np.array([[_ref_overlap(p, q, 'iou') for q in b] for p in a])
    ref_giou = np.array([[_ref_overlap(p, q, 'giou') for q in b] for p in a])
    # union = area(a) + area(b) - intersection, with intersection = iou * union
    ref_union = (area[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None]) / (1 + ref_iou)
    np.testing.assert_allclose(iou.numpy(), ref_iou, rtol=0, atol=1e-12, err_msg='pairwise_iou')
    np.testing.assert_allclose(union.numpy(), ref_union, rtol=1e-12, err_msg='pairwise_iou union')
    np.testing.assert_allclose(giou, ref_giou, rtol=0, atol=1e-12, err_msg='pairwise_giou')
    assert abs(iou.numpy()[2, 0] - 1) < 1e-12 and giou[0, 1] < 0


@pytest.mark.parametrize('mode', ['iou', 'giou', 'diou', 'ciou'])
def test_aligned_iou_matches_reference(mode):
    rng = np.random.default_rng(2)
    a, b = _random_xyxy(rng, 16), _random_xyxy(rng, 16)
    b[0] = a[0]  # identical pair: every mode gives 1
    got = box_ops.aligned_iou(_t(a), _t(b), mode=mode).numpy()
    ref = np.array([_ref_overlap(p, q, mode) for p, q in zip(a, b)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9, err_msg=f'aligned_iou({mode})')
    assert abs(got[0] - 1) < 1e-9, f'identical boxes give {got[0]}'
    # the pairwise version agrees on the diagonal
    if mode in ('iou', 'giou'):
        fn = box_ops.pairwise_giou if mode == 'giou' else _pairwise_iou_only
        diag = np.diag(fn(_t(a), _t(b)).numpy())
        assert np.abs(diag - got).max() < 1e-12


def test_aligned_iou_modes_are_ordered():
    # every mode subtracts a non-negative penalty from iou, and ciou's adds to diou's
    rng = np.random.default_rng(3)
    a, b = _t(_random_xyxy(rng, 32)), _t(_random_xyxy(rng, 32))
    iou, giou, diou, ciou = (box_ops.aligned_iou(a, b, m).numpy() for m in box_ops.IOU_MODES)
    assert (giou <= iou + 1e-12).all() and (diou <= iou + 1e-12).all()
    assert (ciou <= diou + 1e-12).all()
    assert (giou >= -1).all() and (diou >= -1).all()


def test_aligned_iou_unknown_mode_names_it():
    a = _t([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"unknown mode 'siou'.*'iou', 'giou', 'diou', 'ciou'"):
        box_ops.aligned_iou(a, a, mode='siou')


@pytest.mark.parametrize('mode', ['iou', 'giou', 'diou', 'ciou'])
def test_degenerate_boxes_give_finite_values_and_gradients(mode):
    # zero-area pred vs a normal box, zero-area vs the same zero-area box, and a line box
    pred_cxcywh = np.array([[0.3, 0.3, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.2, 0.0]],
                           dtype='float32')
    gt_cxcywh = np.array([[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.2, 0.1]],
                         dtype='float32')
    pred = paddle.to_tensor(pred_cxcywh, stop_gradient=False)
    gt = box_ops.cxcywh_to_xyxy(paddle.to_tensor(gt_cxcywh))
    out = box_ops.aligned_iou(box_ops.cxcywh_to_xyxy(pred), gt, mode=mode)
    out.sum().backward()
    assert np.isfinite(out.numpy()).all(), f'{mode}: {out.numpy()}'
    assert np.isfinite(pred.grad.numpy()).all(), f'{mode} grad: {pred.grad.numpy()}'
    assert (out.numpy() <= 1).all() and (out.numpy() >= -1).all()

    if mode in ('iou', 'giou'):
        fn = box_ops.pairwise_giou if mode == 'giou' else _pairwise_iou_only
        pair = fn(box_ops.cxcywh_to_xyxy(paddle.to_tensor(pred_cxcywh)), gt).numpy()
        assert np.isfinite(pair).all(), f'pairwise {mode} on degenerate boxes: {pair}'


def test_ciou_alpha_carries_no_gradient():
    # d(ciou)/d(w) with alpha held constant, by central finite differences of a version whose
    # alpha is frozen at the evaluation point
    gt = np.array([0.2, 0.2, 0.6, 0.5])
    p0 = np.array([0.25, 0.15, 0.7, 0.45])

    def ciou_frozen_alpha(p, alpha):
        aspect_diff = (math.atan((gt[2] - gt[0]) / (gt[3] - gt[1])) -
                       math.atan((p[2] - p[0]) / (p[3] - p[1])))
        return _ref_overlap(p, gt, 'diou') - alpha * 4 / math.pi**2 * aspect_diff**2

    iou0 = _ref_overlap(p0, gt, 'iou')
    v0 = 4 / math.pi**2 * (math.atan(0.4 / 0.3) - math.atan(0.45 / 0.3))**2
    alpha0 = v0 / (1 - iou0 + v0)
    num_grad = np.zeros(4)
    for j in range(4):
        d = np.zeros(4)
        d[j] = 1e-6
        num_grad[j] = (ciou_frozen_alpha(p0 + d, alpha0) - ciou_frozen_alpha(p0 - d, alpha0)) / 2e-6
    p = paddle.to_tensor(p0[None], stop_gradient=False)
    box_ops.aligned_iou(p, _t(gt[None]), mode='ciou').sum().backward()
    err = np.abs(p.grad.numpy()[0] - num_grad).max()
    assert err < 1e-6, f'ciou grad vs frozen-alpha finite difference max err {err}'
