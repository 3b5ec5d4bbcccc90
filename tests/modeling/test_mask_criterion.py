"""RTDETRMaskCriterion: the official MaskDINOLoss numbers (tests/reference/mask_rtdetr_loss_ref.npz), numpy
formulas for the mask terms on the drawn points, empty targets, and its refusals."""
import os

import numpy as np
import paddle
import pytest
from helpers.mask_numpy import np_bce, np_point_sample, np_sigmoid

from ppdet_rtdetr.modeling.mask_criterion import RTDETRMaskCriterion
from ppdet_rtdetr.modeling.mask_ops import binary_mask_iou
from ppdet_rtdetr.modeling.matcher import RTDETRHungarianMatcher

REF = os.path.join(os.path.dirname(__file__), '..', 'reference', 'mask_rtdetr_loss_ref.npz')
COEFF = {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}
NAMES = ('class', 'bbox', 'giou', 'mask', 'dice')
KEYS = sorted(f'loss_{n}{s}' for n in NAMES for s in ('', '_aux', '_dn', '_aux_dn'))


class RecordingMatcher(object):
    """Wraps a matcher (or fixed pairs) and keeps the indices of every call."""

    def __init__(self, matcher=None, pairs=None):
        self.matcher, self.pairs, self.calls = matcher, pairs, []

    def __call__(self, boxes, logits, gt_bbox, gt_class, masks=None, gt_mask=None):
        if self.matcher is not None:
            out = self.matcher(boxes, logits, gt_bbox, gt_class, masks=masks, gt_mask=gt_mask)
        else:
            out = [(paddle.to_tensor(np.array(s, 'int64')), paddle.to_tensor(np.array(t, 'int64')))
                   for s, t in self.pairs]
        self.calls.append([(s.numpy(), t.numpy()) for s, t in out])
        return out


@pytest.fixture
def default_dtype():
    """Restores Paddle's default dtype (the reference cases set it: the official code draws its points in it)."""
    before = paddle.get_default_dtype()
    yield paddle.set_default_dtype
    paddle.set_default_dtype(before)


def _inputs(ref, case):
    """The criterion's arguments of one reference case, in its dtype."""
    def get(key):
        return ref[f'{case}/{key}']

    dtype = str(get('dtype'))
    num_images = int(get('num_images'))

    def tensor(key):
        return paddle.to_tensor(get(key).astype(dtype))

    args = dict(boxes=tensor('boxes'), logits=tensor('logits'), masks=tensor('masks'),
                gt_bbox=[tensor(f'gt_bbox_{i}') for i in range(num_images)],
                gt_class=[paddle.to_tensor(get(f'gt_class_{i}')) for i in range(num_images)],
                # uint8 as the reader gives them: the criterion casts them
                gt_mask=[paddle.to_tensor(get(f'gt_mask_{i}')) for i in range(num_images)])
    if f'{case}/dn_num_group' in ref:
        args.update(dn_out_bboxes=tensor('dn_out_bboxes'), dn_out_logits=tensor('dn_out_logits'),
                    dn_out_masks=tensor('dn_out_masks'),
                    dn_meta={'dn_positive_idx': [paddle.to_tensor(get(f'dn_positive_idx_{i}'))
                                                 for i in range(num_images)],
                             'dn_num_group': int(get('dn_num_group'))})
    return dtype, args


@pytest.mark.parametrize('case', ['mixed64', 'mixed32', 'few64', 'empty32'])
def test_losses_and_matches_equal_the_official_reference(case, default_dtype):
    ref = np.load(REF)
    dtype, args = _inputs(ref, case)
    num_points = int(ref[f'{case}/num_sample_points'])
    default_dtype(dtype)
    matcher = RecordingMatcher(RTDETRHungarianMatcher(dict(COEFF), with_mask=True, num_sample_points=num_points))
    crit = RTDETRMaskCriterion(num_classes=args['logits'].shape[-1], matcher=matcher, loss_coeff=dict(COEFF),
                               num_sample_points=num_points)
    paddle.seed(int(ref[f'{case}/seed']))
    out = crit(**args)

    names = [str(n) for n in ref[f'{case}/loss_names']]
    assert sorted(out) == names == KEYS
    got = np.array([float(out[k]) for k in names])
    want = ref[f'{case}/loss_values']
    err = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    # float32: bit-equal on the machine that made the file (other CPUs may round kernels differently);
    # float64: 8e-8 apart, as the official losses end in float32 (a 0-D float64 divided by its [1] float32
    # num_gts stays float32 in Paddle 3)
    assert err.max() <= 1e-6, f'{case}: max rel err {err.max():.2e} at {names[int(err.argmax())]}'
    assert len(matcher.calls) == int(ref[f'{case}/num_matcher_calls'])
    for c, call in enumerate(matcher.calls):
        for i, (src, tgt) in enumerate(call):
            np.testing.assert_array_equal(src, ref[f'{case}/match_{c}_{i}_src'], err_msg=f'call {c} image {i}')
            np.testing.assert_array_equal(tgt, ref[f'{case}/match_{c}_{i}_tgt'], err_msg=f'call {c} image {i}')


@pytest.mark.parametrize('case', ['mixed32', 'few64'])
def test_gradients_equal_the_official_reference(case, default_dtype):
    # including the logits' gradient through the varifocal weight of the negatives, which the box-only
    # RTDETRCriterion treats as a constant
    ref = np.load(REF)
    dtype, args = _inputs(ref, case)
    num_points = int(ref[f'{case}/num_sample_points'])
    default_dtype(dtype)
    preds = ('boxes', 'logits', 'masks', 'dn_out_bboxes', 'dn_out_logits', 'dn_out_masks')
    for key in preds:
        args[key].stop_gradient = False
    matcher = RTDETRHungarianMatcher(dict(COEFF), with_mask=True, num_sample_points=num_points)
    crit = RTDETRMaskCriterion(num_classes=args['logits'].shape[-1], matcher=matcher, loss_coeff=dict(COEFF),
                               num_sample_points=num_points)
    paddle.seed(int(ref[f'{case}/seed']))
    paddle.add_n(list(crit(**args).values())).backward()
    for key in preds:
        got, want = args[key].grad.numpy(), ref[f'{case}/grad_{key}']
        # float64: the official upstream gradients pass its float32 divisions (see above)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                   err_msg=f'{case} d/d{key}: max err {np.abs(got - want).max():.2e}')


def _np_vfl(logits, pairs, gt_class, score_of_pair):
    """Varifocal loss sum of logits [b, q, k], target score_of_pair[(i, s)] at the matched class."""
    label = np.zeros_like(logits)
    score = np.zeros_like(logits)
    for i, (src, tgt) in enumerate(pairs):
        for s, t in zip(src, tgt):
            label[i, s, gt_class[i][t]] = 1
            score[i, s, gt_class[i][t]] = score_of_pair[(i, s)]
    weight = 0.75 * np_sigmoid(logits)**2 * (1 - label) + score
    return (weight * np_bce(logits, score)).sum()


def _small_case(rng, sizes, n_out=1, q=5, k=3, hw=(6, 8), stride=2):
    b = len(sizes)
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (n_out, b, q, 2)), rng.uniform(0.1, 0.4, (n_out, b, q, 2))], -1)
    logits = rng.normal(0, 2, (n_out, b, q, k))
    masks = rng.normal(0, 3, (n_out, b, q) + hw)
    gt_bbox = [np.concatenate([rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))], -1) for n in sizes]
    gt_class = [rng.integers(0, k, (n, 1)).astype('int32') for n in sizes]
    gt_mask = [(rng.uniform(size=(n, hw[0] * stride, hw[1] * stride)) > 0.6).astype('float64') for n in sizes]
    return boxes, logits, masks, gt_bbox, gt_class, gt_mask


def _call(crit, boxes, logits, masks, gt_bbox, gt_class, gt_mask):
    t = paddle.to_tensor
    pm = t(masks, stop_gradient=False)
    out = crit(t(boxes), t(logits), [t(g.reshape(-1, 4)) for g in gt_bbox], [t(c) for c in gt_class], pm,
               [t(m) for m in gt_mask])
    return out, pm


def test_mask_terms_equal_numpy_on_the_drawn_points(default_dtype):
    default_dtype('float64')
    rng = np.random.default_rng(5)
    boxes, logits, masks, gt_bbox, gt_class, gt_mask = _small_case(rng, [2, 1])
    pairs = [([0, 3], [1, 0]), ([2], [0])]
    num_points = 40
    # important_sample_ratio 0: every point is a fresh uniform one, drawn after the (unused) candidates
    crit = RTDETRMaskCriterion(num_classes=3, matcher=RecordingMatcher(pairs=pairs), loss_coeff=dict(COEFF),
                               num_sample_points=num_points, important_sample_ratio=0.)
    paddle.seed(3)
    out, _ = _call(crit, boxes, logits, masks, gt_bbox, gt_class, gt_mask)
    paddle.seed(3)
    paddle.rand([3, 1, 3 * num_points, 2])
    points = paddle.rand([3, num_points, 2]).numpy()

    matched = [(i, s, t) for i, (src, tgt) in enumerate(pairs) for s, t in zip(src, tgt)]
    bce = dice = 0.
    for n, (i, s, t) in enumerate(matched):
        x = np_point_sample(masks[0, i, s], points[n])
        y = np_point_sample(gt_mask[i][t], points[n])
        bce += np_bce(x, y).mean()
        p = np_sigmoid(x)
        dice += 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    num_gts = 3.
    np.testing.assert_allclose(float(out['loss_mask']), 5 * bce / num_gts, rtol=1e-10)
    np.testing.assert_allclose(float(out['loss_dice']), 5 * dice / num_gts, rtol=1e-10)

    # the main set's varifocal target is the IoU of the binarised masks
    iou = {(i, s): binary_mask_iou(paddle.to_tensor(masks[0, i, s][None]), paddle.to_tensor(gt_mask[i][t][None]))
           .item() for i, s, t in matched}
    want = 4 * _np_vfl(logits[0], pairs, [c.ravel() for c in gt_class], iou) / num_gts
    np.testing.assert_allclose(float(out['loss_class']), want, rtol=1e-10)


def test_only_the_main_set_uses_the_mask_iou(default_dtype):
    default_dtype('float64')
    rng = np.random.default_rng(6)
    case = _small_case(rng, [2, 3], n_out=3)
    pairs = [([0, 1], [1, 0]), ([1, 2, 4], [2, 0, 1])]
    out = {}
    for iou_type in ('mask', 'bbox'):
        crit = RTDETRMaskCriterion(num_classes=3, matcher=RecordingMatcher(pairs=pairs), loss_coeff=dict(COEFF),
                                   num_sample_points=16, vfl_iou_type=iou_type)
        paddle.seed(0)
        out[iou_type] = {k: float(v) for k, v in _call(crit, *case)[0].items()}
    for key in KEYS:
        same = out['mask'][key] == out['bbox'][key]
        assert same == (key != 'loss_class'), f'{key}: mask {out["mask"][key]}, bbox {out["bbox"][key]}'


@pytest.mark.parametrize('sizes', [[0, 0], [0, 2]])
def test_empty_gt(sizes, default_dtype):
    default_dtype('float64')
    rng = np.random.default_rng(7)
    case = _small_case(rng, sizes, n_out=2)
    matcher = RTDETRHungarianMatcher(dict(COEFF), with_mask=True, num_sample_points=32)
    crit = RTDETRMaskCriterion(num_classes=3, matcher=matcher, loss_coeff=dict(COEFF), num_sample_points=32)
    paddle.seed(0)
    out, masks = _call(crit, *case)
    assert sorted(out) == KEYS
    assert float(out['loss_class']) > 0 and float(out['loss_class_aux']) > 0
    for key in ('loss_mask', 'loss_dice', 'loss_bbox', 'loss_giou'):
        assert (float(out[key]) == 0) == (sum(sizes) == 0), f'{key} = {float(out[key])} with gt sizes {sizes}'
    assert all(float(out[k]) == 0 for k in KEYS if k.endswith('_dn'))
    paddle.add_n([out['loss_mask'], out['loss_dice']]).backward()
    # no gt: no mask gradient, but a gradient (of zeros), so every rank builds the same graph
    grad = masks.grad.numpy()
    assert grad.shape == masks.shape and (np.abs(grad).sum() > 0) == (sum(sizes) > 0)


def test_mask_gradient_reaches_only_the_matched_queries(default_dtype):
    default_dtype('float64')
    rng = np.random.default_rng(8)
    case = _small_case(rng, [2, 1])
    pairs = [([0, 3], [1, 0]), ([2], [0])]
    crit = RTDETRMaskCriterion(num_classes=3, matcher=RecordingMatcher(pairs=pairs), loss_coeff=dict(COEFF),
                               num_sample_points=64)
    out, masks = _call(crit, *case)
    (out['loss_mask'] + out['loss_dice']).backward()
    # [1, b, q, h, w] -> [b, q]: which queries got a gradient
    touched = np.abs(masks.grad.numpy()[0]).sum((-1, -2)) > 0
    want = np.zeros_like(touched)
    want[0, [0, 3]] = want[1, 2] = True
    np.testing.assert_array_equal(touched, want)


@pytest.mark.parametrize('kwargs,message', [
    ({'loss_coeff': {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5}},
     "RTDETRMaskCriterion: loss_coeff lacks ['dice'], got {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5}"),
    ({'vfl_iou_type': 'segm'}, "RTDETRMaskCriterion: unknown vfl_iou_type 'segm', expected one of ['bbox', 'mask']"),
    ({'oversample_ratio': 0.5}, 'RTDETRMaskCriterion: oversample_ratio must be >= 1, got 0.5'),
    ({'important_sample_ratio': 1.5}, 'RTDETRMaskCriterion: important_sample_ratio must be in [0, 1], got 1.5'),
    ({'num_sample_points': 0}, 'RTDETRMaskCriterion: num_sample_points must be >= 1, got 0'),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError) as err:
        RTDETRMaskCriterion(matcher=None, **kwargs)
    assert str(err.value) == message


def test_ppdet_create_shares_with_mask_and_num_sample_points(monkeypatch):
    from ppdet.core.workspace import create, global_config
    monkeypatch.setitem(global_config, 'with_mask', True)
    monkeypatch.setitem(global_config, 'num_sample_points', 100)
    monkeypatch.setitem(global_config['RTDETRHungarianMatcher'], 'matcher_coeff', dict(COEFF))
    crit = create('RTDETRMaskCriterion')
    assert isinstance(crit, RTDETRMaskCriterion) and crit.num_sample_points == 100
    assert isinstance(crit.matcher, RTDETRHungarianMatcher)
    assert crit.matcher.with_mask and crit.matcher.num_sample_points == 100


@pytest.mark.parametrize('drop,message', [
    ('count', 'RTDETRMaskCriterion: image 1 has 1 gt boxes but gt_mask (gt_segm) of shape [0, 12, 16]; '
              'expected [1, H, W]'),
    ('size', 'RTDETRMaskCriterion: gt masks of one batch must share [H, W] (the padded input size), '
             'got [(12, 16), (12, 18)]'),
    ('image', 'RTDETRMaskCriterion: gt_mask (gt_segm) has 1 images, gt_bbox 2'),
])
def test_gt_masks_that_do_not_pair_with_the_boxes_are_named(drop, message):
    rng = np.random.default_rng(9)
    boxes, logits, masks, gt_bbox, gt_class, gt_mask = _small_case(rng, [2, 1])
    if drop == 'count':
        gt_mask[1] = gt_mask[1][:0]
    elif drop == 'size':
        gt_mask[1] = np.zeros((1, 12, 18))
    else:
        gt_mask = gt_mask[:1]
    crit = RTDETRMaskCriterion(num_classes=3, matcher=RecordingMatcher(pairs=[([0], [0]), ([1], [0])]),
                               num_sample_points=8)
    with pytest.raises(ValueError) as err:
        _call(crit, boxes, logits, masks, gt_bbox, gt_class, gt_mask)
    assert str(err.value) == message
