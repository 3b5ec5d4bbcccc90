"""DEIM's Matchability-Aware Loss (`class_loss: mal`) against a numpy formula written here from the paper."""
import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.criterion import RTDETRCriterion
from ppdet_rtdetr.modeling.mal_loss import mal_loss


class FixedMatcher(object):
    """Returns the same (src, tgt) pairs every call."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __call__(self, boxes, logits, gt_bbox, gt_class):
        return [(paddle.to_tensor(np.array(s, 'int64')), paddle.to_tensor(np.array(t, 'int64')))
                for s, t in self.pairs]


def _np_bce_logits(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_iou(a, b):
    """IoU of two cxcywh boxes [4]."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0) * max(min(ay1, by1) - max(ay0, by0), 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _np_mal(logits, positives, gamma, alpha):
    """MAL summed over [q, k] logits, from the paper's two cases, one entry at a time.

    positives: {(query, class): iou}. A positive entry is BCE(x, iou ** gamma) with weight 1; every other
    entry is BCE(x, 0) weighted alpha * sigmoid(x) ** gamma (alpha None: 1).
    """
    total = 0.0
    for (i, c), x in np.ndenumerate(logits):
        if (i, c) in positives:
            total += _np_bce_logits(x, positives[(i, c)]**gamma)
        else:
            total += (1.0 if alpha is None else alpha) * _np_sigmoid(x)**gamma * _np_bce_logits(x, 0.0)
    return total


@pytest.mark.parametrize('gamma, alpha', [(1.5, None), (2.0, 0.75)])
def test_mal_loss_matches_the_formula(gamma, alpha):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(5, 3))
    positives = {(0, 2): 0.83, (3, 0): 0.12, (4, 1): 0.5}
    label = np.zeros_like(logits)
    iou = rng.uniform(size=(5, 1))  # any value where nothing is matched: it must not count
    for (i, c), q in positives.items():
        label[i, c] = 1
        iou[i, 0] = q
    got = mal_loss(paddle.to_tensor(logits[None]), paddle.to_tensor(label[None]), paddle.to_tensor(iou[None]),
                   gamma, alpha)
    ref = _np_mal(logits, positives, gamma, alpha)
    assert got.shape == []
    assert abs(float(got) - ref) <= 1e-9 * ref, (float(got), ref)


def test_positive_gradient_has_weight_one_whatever_the_iou():
    # d BCE(x, t) / dx = sigmoid(x) - t with weight 1: a poor match (iou 0.1) is pushed as hard as a good
    # one, towards its lower target 0.1 ** 1.5 (the varifocal loss would scale its gradient by 0.1)
    x = np.array([[[0.4]], [[0.4]]])
    iou = np.array([[[0.1]], [[0.9]]])
    logits = paddle.to_tensor(x, stop_gradient=False)
    mal_loss(logits, paddle.ones([2, 1, 1], 'float64'), paddle.to_tensor(iou), gamma=1.5).backward()
    ref = _np_sigmoid(x) - iou**1.5
    np.testing.assert_allclose(logits.grad.numpy(), ref, rtol=1e-12)


def test_criterion_class_loss_mal():
    rng = np.random.default_rng(1)
    q, k = 6, 4
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (1, 1, q, 2)), rng.uniform(0.1, 0.4, (1, 1, q, 2))], -1)
    logits = rng.normal(size=(1, 1, q, k))
    gt_bbox = np.concatenate([rng.uniform(0.3, 0.7, (2, 2)), rng.uniform(0.1, 0.4, (2, 2))], -1)
    gt_class = np.array([3, 1])
    pairs = [([4, 1], [0, 1])]
    args = (paddle.to_tensor(boxes), paddle.to_tensor(logits), [paddle.to_tensor(gt_bbox)],
            [paddle.to_tensor(gt_class.reshape(-1, 1).astype('int32'))])
    mal = RTDETRCriterion(num_classes=k, matcher=FixedMatcher(pairs), class_loss='mal')(*args)
    vfl = RTDETRCriterion(num_classes=k, matcher=FixedMatcher(pairs))(*args)
    positives = {(s, gt_class[t]): _np_iou(boxes[0, 0, s], gt_bbox[t]) for s, t in zip(*pairs[0])}
    ref = _np_mal(logits[0, 0], positives, 1.5, None) / 2  # divided by the 2 gts
    assert abs(float(mal['loss_class']) - ref) <= 1e-9 * ref, (float(mal['loss_class']), ref)
    assert abs(float(vfl['loss_class']) - ref) > 1e-3, 'the varifocal loss should differ'
    # only the class loss changes
    for key in ('loss_bbox', 'loss_giou'):
        assert float(mal[key]) == float(vfl[key]), key


def test_bad_class_loss_options_refuse_at_construction():
    with pytest.raises(ValueError, match=r"unknown class_loss 'mall', expected one of \['vfl', 'mal'\]"):
        RTDETRCriterion(class_loss='mall')
    with pytest.raises(ValueError, match="class_loss 'mal' replaces the varifocal loss and needs use_vfl: True"):
        RTDETRCriterion(class_loss='mal', use_vfl=False)


def test_default_is_the_official_varifocal_loss():
    assert RTDETRCriterion().class_loss == 'vfl'


def test_mal_mixin_switches_only_the_class_loss(tmp_path):
    import os
    from conftest import ROOT, fresh_config
    from ppdet.core.workspace import create
    leaf = tmp_path / 'leaf.yml'
    leaf.write_text("_BASE_: ['{}', '{}']\n".format(os.path.join(ROOT, 'configs', 'demo', 'rtdetr_r18vd_shapes.yml'),
                                                     os.path.join(ROOT, 'configs', 'small_data', '_base_', 'mal.yml')))
    fresh_config(str(leaf))
    crit = create('RTDETRCriterion')
    assert (crit.class_loss, crit.mal_gamma, crit.mal_alpha) == ('mal', 1.5, None)
    assert crit.loss_coeff == {'class': 1, 'bbox': 5, 'giou': 2} and crit.use_vfl and crit.aux_loss
