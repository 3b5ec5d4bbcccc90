"""RTDETRCriterion against numpy formulas written here (varifocal, focal, L1, IoU-family losses)."""
import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.criterion import RTDETRCriterion, mean_num_gts
from ppdet_rtdetr.modeling.matcher import RTDETRHungarianMatcher

COEFF = {'class': 1, 'bbox': 5, 'giou': 2}
KEYS = [f'loss_{n}{s}' for n in ('class', 'bbox', 'giou') for s in ('', '_aux', '_dn', '_aux_dn')]


class FixedMatcher(object):
    """Returns the same (src, tgt) pairs every call and counts the calls."""

    def __init__(self, pairs):
        self.pairs = pairs
        self.calls = 0

    def __call__(self, boxes, logits, gt_bbox, gt_class):
        self.calls += 1
        return [(paddle.to_tensor(np.array(s, 'int64')), paddle.to_tensor(np.array(t, 'int64')))
                for s, t in self.pairs]


# ---- numpy references --------------------------------------------------------------------------
def _xyxy(b):
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _np_overlap(p_cxcywh, g_cxcywh, mode):
    """[n, 4] cxcywh pairs -> [n] iou / giou / diou / ciou (papers' definitions)."""
    p, g = _xyxy(p_cxcywh), _xyxy(g_cxcywh)
    iw = np.clip(np.minimum(p[:, 2], g[:, 2]) - np.maximum(p[:, 0], g[:, 0]), 0, None)
    ih = np.clip(np.minimum(p[:, 3], g[:, 3]) - np.maximum(p[:, 1], g[:, 1]), 0, None)
    inter = iw * ih
    union = p_cxcywh[:, 2] * p_cxcywh[:, 3] + g_cxcywh[:, 2] * g_cxcywh[:, 3] - inter
    iou = inter / union
    cw = np.maximum(p[:, 2], g[:, 2]) - np.minimum(p[:, 0], g[:, 0])
    ch = np.maximum(p[:, 3], g[:, 3]) - np.minimum(p[:, 1], g[:, 1])
    if mode == 'iou':
        return iou
    if mode == 'giou':
        return iou - (cw * ch - union) / (cw * ch)
    rho2 = ((p_cxcywh[:, :2] - g_cxcywh[:, :2])**2).sum(-1)
    diou = iou - rho2 / (cw**2 + ch**2)
    if mode == 'diou':
        return diou
    v = 4 / np.pi**2 * (np.arctan(g_cxcywh[:, 2] / g_cxcywh[:, 3]) -
                        np.arctan(p_cxcywh[:, 2] / p_cxcywh[:, 3]))**2
    return diou - v / (1 - iou + v) * v


def _np_bce_logits(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_targets(boxes, pairs, gt_bbox, gt_class, k):
    """One-hot label [b, q, k] and IoU score [b, q, k] at the matched (query, class)."""
    label = np.zeros(boxes.shape[:2] + (k, ))
    score = np.zeros_like(label)
    for i, (src, tgt) in enumerate(pairs):
        for s, t in zip(src, tgt):
            c = gt_class[i][t]
            label[i, s, c] = 1
            score[i, s, c] = _np_overlap(boxes[i, s][None], gt_bbox[i][t][None], 'iou')[0]
    return label, score


def _np_losses(boxes, logits, pairs, gt_bbox, gt_class, num_gts, box_loss='giou', use_vfl=True):
    """(class, bbox, giou) of one prediction set boxes [b, q, 4], logits [b, q, k]."""
    label, score = _np_targets(boxes, pairs, gt_bbox, gt_class, logits.shape[-1])
    p = _np_sigmoid(logits)
    if use_vfl:
        weight = 0.75 * p**2 * (1 - label) + score
        cls = (weight * _np_bce_logits(logits, score)).sum()
    else:
        p_t = p * label + (1 - p) * (1 - label)
        alpha_t = 0.25 * label + 0.75 * (1 - label)
        cls = (alpha_t * (1 - p_t)**2 * _np_bce_logits(logits, label)).sum()
    src = np.array([boxes[i, s] for i, (ss, _) in enumerate(pairs) for s in ss]).reshape(-1, 4)
    tgt = np.array([gt_bbox[i][t] for i, (_, tt) in enumerate(pairs) for t in tt]).reshape(-1, 4)
    l1 = np.abs(src - tgt).sum()
    giou = (1 - _np_overlap(src, tgt, box_loss)).sum() if len(src) else 0.0
    return (COEFF['class'] * cls / num_gts, COEFF['bbox'] * l1 / num_gts,
            COEFF['giou'] * giou / num_gts)


# ---- fixtures ----------------------------------------------------------------------------------
def _case(rng, n_out, bs, q, k, sizes):
    cxcy = rng.uniform(0.25, 0.75, (n_out, bs, q, 2))
    wh = rng.uniform(0.05, 0.4, (n_out, bs, q, 2))
    boxes = np.concatenate([cxcy, wh], -1)
    logits = rng.normal(size=(n_out, bs, q, k))
    gt_bbox = [np.concatenate([rng.uniform(0.25, 0.75, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], -1)
               for n in sizes]
    gt_class = [rng.integers(0, k, n) for n in sizes]
    return boxes, logits, gt_bbox, gt_class


def _tensors(boxes, logits, gt_bbox, gt_class):
    pb = paddle.to_tensor(boxes, stop_gradient=False)
    pl = paddle.to_tensor(logits, stop_gradient=False)
    gb = [paddle.to_tensor(g.reshape(-1, 4)) for g in gt_bbox]
    gc = [paddle.to_tensor(c.reshape(-1, 1).astype('int32')) for c in gt_class]
    return pb, pl, gb, gc


def _check(name, got, ref, tol=1e-9):
    got = float(got)
    err = abs(got - ref)
    assert err <= tol * max(1.0, abs(ref)), f'{name}: got {got}, ref {ref}, max err {err}'


# ---- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize('use_vfl', [True, False])
def test_class_loss_matches_numpy(use_vfl):
    rng = np.random.default_rng(0)
    boxes, logits, gt_bbox, gt_class = _case(rng, 1, 2, 6, 4, [3, 2])
    pairs = [([0, 2, 5], [1, 0, 2]), ([1, 4], [1, 0])]
    crit = RTDETRCriterion(num_classes=4, matcher=FixedMatcher(pairs), use_vfl=use_vfl)
    out = crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    ref = _np_losses(boxes[0], logits[0], pairs, gt_bbox, gt_class, 5.0, use_vfl=use_vfl)
    for name, r in zip(('loss_class', 'loss_bbox', 'loss_giou'), ref):
        _check(f'{name} (vfl={use_vfl})', out[name], r)
    assert sorted(out) == sorted(KEYS)
    assert all(v.shape == [] for v in out.values()), {k: v.shape for k, v in out.items()}


@pytest.mark.parametrize('vfl_weight_grad', [True, False])
def test_varifocal_gradient_through_the_negatives_weight(vfl_weight_grad):
    """d loss_class / d logits against the derivative written out in numpy: PaddleDetection's (the default)
    differentiates the negatives' weight alpha * p**gamma too, the authors' PyTorch code holds it constant."""
    rng = np.random.default_rng(3)
    boxes, logits, gt_bbox, gt_class = _case(rng, 1, 2, 6, 4, [3, 2])
    pairs = [([0, 2, 5], [1, 0, 2]), ([1, 4], [1, 0])]
    # True is the default
    crit = RTDETRCriterion(num_classes=4, matcher=FixedMatcher(pairs), **({} if vfl_weight_grad else
                                                                            {'vfl_weight_grad': False}))
    pb, pl, gb, gc = _tensors(boxes, logits, gt_bbox, gt_class)
    got, = paddle.grad([crit(pb, pl, gb, gc)['loss_class']], [pl])
    label, score = _np_targets(boxes[0], pairs, gt_bbox, gt_class, 4)
    x = logits[0]
    p = _np_sigmoid(x)
    # d/dx of w * BCE(x, score) with w = 0.75 p^2 (1 - label) + score, and BCE'(x) = p - score
    d_weight = 0.75 * 2 * p * p * (1 - p) * (1 - label) if vfl_weight_grad else 0.
    want = (d_weight * _np_bce_logits(x, score) + (0.75 * p**2 * (1 - label) + score) * (p - score)) / 5.0
    np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-7, atol=1e-12)


def test_varifocal_target_is_the_matched_iou():
    # a query exactly on its gt has target 1, so its positive term is plain BCE(x, 1); the
    # unmatched queries only carry alpha * p^gamma * BCE(x, 0)
    boxes = np.array([[[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]]])
    logits = np.array([[[[0.3, -0.2], [1.0, -1.0]]]])
    crit = RTDETRCriterion(num_classes=2, matcher=FixedMatcher([([0], [0])]))
    out = crit(*_tensors(boxes, logits, [boxes[0, 0, :1]], [np.array([1])]))
    x = logits[0, 0]
    p = _np_sigmoid(x)
    ref = (_np_bce_logits(x[0, 1], 1.0) + 0.75 * p[0, 0]**2 * _np_bce_logits(x[0, 0], 0.0) +
           0.75 * (p[1]**2 * _np_bce_logits(x[1], 0.0)).sum())
    _check('loss_class', out['loss_class'], ref)
    _check('loss_bbox', out['loss_bbox'], 0.0)
    _check('loss_giou', out['loss_giou'], 0.0)


def test_box_losses_on_hand_made_case_with_known_match():
    # real Hungarian matcher: query 1 overlaps gt 0 and predicts its class, query 0 is far away
    boxes = np.array([[[[0.15, 0.15, 0.1, 0.1], [0.52, 0.48, 0.3, 0.2], [0.85, 0.2, 0.1, 0.3]]]])
    logits = np.array([[[[-3.0, -3.0], [-3.0, 3.0], [-3.0, -3.0]]]])
    gt_bbox, gt_class = [np.array([[0.5, 0.5, 0.32, 0.24]])], [np.array([1])]
    crit = RTDETRCriterion(num_classes=2, matcher=RTDETRHungarianMatcher())
    out = crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    l1 = 0.02 + 0.02 + 0.02 + 0.04
    # xyxy: pred (0.37, 0.38, 0.67, 0.58), gt (0.34, 0.38, 0.66, 0.62): inter 0.29 * 0.2
    inter, union = 0.29 * 0.2, 0.3 * 0.2 + 0.32 * 0.24 - 0.29 * 0.2
    enclose = 0.33 * 0.24
    giou = inter / union - (enclose - union) / enclose
    _check('loss_bbox', out['loss_bbox'], 5 * l1)
    _check('loss_giou', out['loss_giou'], 2 * (1 - giou))
    ref = _np_losses(boxes[0], logits[0], [([1], [0])], gt_bbox, gt_class, 1.0)
    _check('loss_class', out['loss_class'], ref[0])


@pytest.mark.parametrize('sizes', [[0, 2], [0, 0]])
def test_empty_gt_gives_zero_box_losses_and_positive_class_loss(sizes):
    rng = np.random.default_rng(1)
    boxes, logits, gt_bbox, gt_class = _case(rng, 3, 2, 5, 3, sizes)
    dn_boxes, dn_logits, _, _ = _case(rng, 2, 2, 4, 3, sizes)
    pb, pl, gb, gc = _tensors(boxes, logits, gt_bbox, gt_class)
    dn_pb, dn_pl = (paddle.to_tensor(dn_boxes, stop_gradient=False),
                    paddle.to_tensor(dn_logits, stop_gradient=False))
    positive = [paddle.zeros([0], 'int64'), paddle.to_tensor([0, 1, 2, 3][:sizes[1] * 2])]
    dn_meta = {'dn_positive_idx': positive, 'dn_num_group': 2}
    crit = RTDETRCriterion(num_classes=3, matcher=RTDETRHungarianMatcher())
    out = crit(pb, pl, gb, gc, dn_out_bboxes=dn_pb, dn_out_logits=dn_pl, dn_meta=dn_meta)
    values = {k: float(v) for k, v in out.items()}
    assert all(np.isfinite(v) for v in values.values()), values
    # numpy, with the normaliser clipped to 1 gt: Hungarian pairs for the outputs, fixed ones for denoising
    num_gts = max(sum(sizes), 1)
    per_out = []
    for j in range(3):
        pairs = [(s.numpy(), t.numpy()) for s, t in crit.matcher(*_tensors(boxes[j], logits[j], gt_bbox, gt_class))]
        per_out.append(_np_losses(boxes[j], logits[j], pairs, gt_bbox, gt_class, num_gts))
    fixed = [(p.numpy(), np.tile(np.arange(n), 2)) for p, n in zip(positive, sizes)]
    per_dn = [_np_losses(dn_boxes[j], dn_logits[j], fixed, gt_bbox, gt_class, num_gts * 2) for j in range(2)]
    for n, name in enumerate(('class', 'bbox', 'giou')):
        _check(f'loss_{name}', values[f'loss_{name}'], per_out[2][n])
        _check(f'loss_{name}_aux', values[f'loss_{name}_aux'], per_out[0][n] + per_out[1][n])
        _check(f'loss_{name}_dn', values[f'loss_{name}_dn'], per_dn[1][n])
        _check(f'loss_{name}_aux_dn', values[f'loss_{name}_aux_dn'], per_dn[0][n])
    if sum(sizes) == 0:
        for key in KEYS:
            if 'class' not in key:
                assert values[key] == 0.0, f'{key} = {values[key]}'
        # the class loss keeps the same formula: all-zero targets, normaliser clipped to 1
        p = _np_sigmoid(logits[-1])
        ref = (0.75 * p**2 * _np_bce_logits(logits[-1], 0.0)).sum()
        _check('loss_class', out['loss_class'], ref)
    paddle.add_n(list(out.values())).backward()
    for name, t in (('boxes', pb), ('logits', pl), ('dn boxes', dn_pb), ('dn logits', dn_pl)):
        # box losses stay connected to the graph even when they are 0: the grad exists
        assert t.grad is not None, f'{name} has no grad'
        assert np.isfinite(t.grad.numpy()).all(), f'{name} grad not finite'


def test_aux_losses_sum_over_the_non_final_outputs():
    rng = np.random.default_rng(2)
    n_out = 4
    boxes, logits, gt_bbox, gt_class = _case(rng, n_out, 2, 6, 3, [2, 3])
    matcher = RTDETRHungarianMatcher()
    crit = RTDETRCriterion(num_classes=3, matcher=matcher)
    out = crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    # each output on its own (its own match), through the numpy formula
    per_out = []
    for j in range(n_out):
        pb, pl, gb, gc = _tensors(boxes[j], logits[j], gt_bbox, gt_class)
        pairs = [(s.numpy(), t.numpy()) for s, t in matcher(pb, pl, gb, gc)]
        per_out.append(_np_losses(boxes[j], logits[j], pairs, gt_bbox, gt_class, 5.0))
    for n, name in enumerate(('class', 'bbox', 'giou')):
        _check(f'loss_{name}', out[f'loss_{name}'], per_out[-1][n])
        _check(f'loss_{name}_aux', out[f'loss_{name}_aux'], sum(p[n] for p in per_out[:-1]))

    counting = FixedMatcher([([0, 1], [1, 0]), ([2, 3, 4], [0, 1, 2])])
    crit = RTDETRCriterion(num_classes=3, matcher=counting)
    crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    assert counting.calls == n_out, f'matcher called {counting.calls} times for {n_out} outputs'
    counting.calls = 0
    no_aux = RTDETRCriterion(num_classes=3, matcher=counting, aux_loss=False)
    out = no_aux(*_tensors(boxes, logits, gt_bbox, gt_class))
    assert counting.calls == 1 and float(out['loss_class_aux']) == 0.0


def test_dn_losses_use_the_fixed_indices():
    # gt 0 is at the left, gt 1 at the right; positive dn queries 0 and 3 are copies of gt 0,
    # 1 and 4 of gt 1 (2 groups), but their boxes sit on the *other* gt: Hungarian would swap them
    gt_bbox = [np.array([[0.25, 0.5, 0.2, 0.2], [0.75, 0.5, 0.2, 0.3]])]
    gt_class = [np.array([0, 1])]
    rng = np.random.default_rng(3)
    dn_boxes = np.tile(np.array([0.5, 0.5, 0.1, 0.1]), (2, 1, 6, 1))
    dn_boxes[:, 0, [0, 3]] = [0.74, 0.5, 0.2, 0.3]
    dn_boxes[:, 0, [1, 4]] = [0.26, 0.5, 0.2, 0.2]
    dn_logits = rng.normal(size=(2, 1, 6, 2))
    boxes, logits, _, _ = _case(rng, 2, 1, 4, 2, [2])
    dn_meta = {'dn_positive_idx': [paddle.to_tensor([0, 1, 3, 4])], 'dn_num_group': 2}
    crit = RTDETRCriterion(num_classes=2, matcher=RTDETRHungarianMatcher())
    pb, pl, gb, gc = _tensors(boxes, logits, gt_bbox, gt_class)
    out = crit(pb, pl, gb, gc, dn_out_bboxes=paddle.to_tensor(dn_boxes),
               dn_out_logits=paddle.to_tensor(dn_logits), dn_meta=dn_meta)
    fixed = [([0, 1, 3, 4], [0, 1, 0, 1])]
    num_gts_dn = 2.0 * 2
    for layer, suffix in ((1, '_dn'), (0, '_aux_dn')):
        ref = _np_losses(dn_boxes[layer], dn_logits[layer], fixed, gt_bbox, gt_class, num_gts_dn)
        for n, name in enumerate(('class', 'bbox', 'giou')):
            _check(f'loss_{name}{suffix}', out[f'loss_{name}{suffix}'], ref[n])
    hungarian = RTDETRHungarianMatcher()(
        paddle.to_tensor(dn_boxes[1]), paddle.to_tensor(dn_logits[1]), gb, gc)[0]
    assert hungarian[1].numpy().tolist() != [0, 1], 'case does not separate fixed from Hungarian'
    swapped = _np_losses(dn_boxes[1], dn_logits[1], [([0, 1], [1, 0])], gt_bbox, gt_class,
                         num_gts_dn)
    assert float(out['loss_bbox_dn']) > 10 * swapped[1], 'dn loss looks Hungarian-matched'


def test_dn_keys_are_zero_without_dn_meta():
    rng = np.random.default_rng(4)
    out = RTDETRCriterion(num_classes=3, matcher=RTDETRHungarianMatcher())(
        *_tensors(*_case(rng, 2, 1, 4, 3, [2])))
    assert sorted(out) == sorted(KEYS)
    for key in KEYS:
        if key.endswith('_dn'):
            assert float(out[key]) == 0.0 and out[key].shape == [], key


@pytest.mark.parametrize('box_loss', ['giou', 'diou', 'ciou'])
def test_box_loss_modes_match_their_formula(box_loss):
    rng = np.random.default_rng(5)
    boxes, logits, gt_bbox, gt_class = _case(rng, 1, 2, 5, 3, [3, 2])
    pairs = [([0, 1, 3], [2, 0, 1]), ([2, 4], [1, 0])]
    crit = RTDETRCriterion(num_classes=3, matcher=FixedMatcher(pairs), box_loss=box_loss)
    out = crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    ref = _np_losses(boxes[0], logits[0], pairs, gt_bbox, gt_class, 5.0, box_loss=box_loss)
    _check(f'loss_giou ({box_loss})', out['loss_giou'], ref[2])
    # the modes really differ on this case
    others = {m: _np_losses(boxes[0], logits[0], pairs, gt_bbox, gt_class, 5.0, box_loss=m)[2]
              for m in ('giou', 'diou', 'ciou') if m != box_loss}
    for m, v in others.items():
        assert abs(float(out['loss_giou']) - v) > 1e-4, f'{box_loss} equals {m}: {v}'


def test_unknown_box_loss_is_named():
    with pytest.raises(ValueError, match=r"unknown box_loss 'eiou'.*'giou', 'diou', 'ciou'"):
        RTDETRCriterion(box_loss='eiou')


def test_num_gts_normalisation_on_a_single_process():
    assert paddle.distributed.get_world_size() == 1
    gts = [paddle.zeros([3, 4]), paddle.zeros([0, 4]), paddle.zeros([2, 4])]
    n = mean_num_gts(gts)
    assert n.shape == [] and float(n) == 5.0, f'num_gts {float(n)}'
    assert float(mean_num_gts([paddle.zeros([0, 4])] * 2)) == 1.0
    # doubling every gt halves every loss term
    rng = np.random.default_rng(6)
    boxes, logits, gt_bbox, gt_class = _case(rng, 1, 1, 6, 3, [2])
    pairs = [([0, 1], [0, 1])]
    crit = RTDETRCriterion(num_classes=3, matcher=FixedMatcher(pairs))
    one = crit(*_tensors(boxes, logits, gt_bbox, gt_class))
    extra = [np.concatenate([gt_bbox[0], gt_bbox[0]])]
    two = crit(*_tensors(boxes, logits, extra, [np.concatenate([gt_class[0]] * 2)]))
    for key in ('loss_bbox', 'loss_giou'):
        _check(key, two[key], float(one[key]) / 2)


def test_ppdet_create_injects_the_matcher():
    from ppdet.core.workspace import create
    crit = create('RTDETRCriterion')
    assert isinstance(crit, RTDETRCriterion)
    assert isinstance(crit.matcher, RTDETRHungarianMatcher), type(crit.matcher)


class RecordingMatcher(RTDETRHungarianMatcher):
    """The real matcher, keeping the gt classes of every call."""

    def __init__(self):
        super().__init__()
        self.classes = []

    def __call__(self, boxes, logits, gt_bbox, gt_class):
        self.classes.append([c.numpy().ravel().tolist() for c in gt_class])
        return super().__call__(boxes, logits, gt_bbox, gt_class)


def test_agnostic_encoder_is_one_class_that_every_gt_belongs_to():
    rng = np.random.default_rng(7)
    boxes, logits, gt_bbox, gt_class = _case(rng, 2, 2, 6, 3, [3, 2])
    enc_boxes, enc_logits, _, _ = _case(rng, 1, 2, 6, 1, [0, 0])
    matcher = RecordingMatcher()
    crit = RTDETRCriterion(num_classes=3, matcher=matcher)

    def run(classes):
        pb, pl, gb, gc = _tensors(boxes, logits, gt_bbox, classes)
        enc = (paddle.to_tensor(enc_boxes[0]), paddle.to_tensor(enc_logits[0]))
        return {k: float(v) for k, v in crit(pb, pl, gb, gc, enc_agnostic=enc).items()}

    out = run(gt_class)
    assert matcher.classes[-1] == [[0, 0, 0], [0, 0]], f'encoder matched with classes {matcher.classes[-1]}'
    # numpy: decoder layer 0 with its classes plus the encoder as one class, each with its own match
    zeros = [np.zeros_like(c) for c in gt_class]
    per_set = []
    for b, l, classes in ((boxes[0], logits[0], gt_class), (enc_boxes[0], enc_logits[0], zeros)):
        pairs = [(s.numpy(), t.numpy()) for s, t in matcher(*_tensors(b, l, gt_bbox, classes))]
        per_set.append(_np_losses(b, l, pairs, gt_bbox, classes, 5.0))
    dec_last = _np_losses(boxes[1], logits[1], [(s.numpy(), t.numpy()) for s, t in matcher(
        *_tensors(boxes[1], logits[1], gt_bbox, gt_class))], gt_bbox, gt_class, 5.0)
    for n, name in enumerate(('class', 'bbox', 'giou')):
        _check(f'loss_{name}', out[f'loss_{name}'], dec_last[n])
        _check(f'loss_{name}_aux', out[f'loss_{name}_aux'], per_set[0][n] + per_set[1][n])
    assert per_set[1][0] > 0 and per_set[1][1] > 0, f'encoder term {per_set[1]} does not separate'
    # the encoder term does not see the classes: relabel the gt, the aux sum moves by the decoder's change only
    relabelled = [(c + 1) % 3 for c in gt_class]
    moved = run(relabelled)
    pairs = [(s.numpy(), t.numpy()) for s, t in matcher(*_tensors(boxes[0], logits[0], gt_bbox, relabelled))]
    dec0 = _np_losses(boxes[0], logits[0], pairs, gt_bbox, relabelled, 5.0)
    _check('loss_class_aux (relabelled)', moved['loss_class_aux'], dec0[0] + per_set[1][0])
    no_aux = RTDETRCriterion(num_classes=3, matcher=RTDETRHungarianMatcher(), aux_loss=False)
    pb, pl, gb, gc = _tensors(boxes, logits, gt_bbox, gt_class)
    out = no_aux(pb, pl, gb, gc, enc_agnostic=(paddle.to_tensor(enc_boxes[0]), paddle.to_tensor(enc_logits[0])))
    assert float(out['loss_class_aux']) == 0.0, 'aux_loss=False also drops the encoder term'
