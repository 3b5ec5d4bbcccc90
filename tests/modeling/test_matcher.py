"""RTDETRHungarianMatcher: batch invariance, empty targets, known and brute-force optimal match."""
import itertools
import math

import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.matcher import RTDETRHungarianMatcher

COEFF = {'class': 2, 'bbox': 5, 'giou': 2}


def _random_case(rng, bs, num_queries, num_classes, sizes):
    cxcy = rng.uniform(0.2, 0.8, size=(bs, num_queries, 2))
    wh = rng.uniform(0.05, 0.4, size=(bs, num_queries, 2))
    boxes = np.concatenate([cxcy, wh], -1).astype('float32')
    logits = rng.normal(size=(bs, num_queries, num_classes)).astype('float32')
    gt_bbox, gt_class = [], []
    for n in sizes:
        g = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], -1)
        gt_bbox.append(paddle.to_tensor(g.astype('float32').reshape([n, 4])))
        gt_class.append(paddle.to_tensor(rng.integers(0, num_classes, (n, 1)).astype('int32')))
    return paddle.to_tensor(boxes), paddle.to_tensor(logits), gt_bbox, gt_class


def _ref_cost(box, logit, gt_box, gt_cls, coeff, alpha=0.25, gamma=2.0):
    """Cost of one (query, gt) pair, written out scalar by scalar."""
    p = 1 / (1 + math.exp(-logit[gt_cls]))
    neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    pos = alpha * (1 - p)**gamma * -math.log(p + 1e-8)
    l1 = sum(abs(a - b) for a, b in zip(box, gt_box))

    def xyxy(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    a, b = xyxy(box), xyxy(gt_box)
    inter = (max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1])))
    union = box[2] * box[3] + gt_box[2] * gt_box[3] - inter
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (enclose - union) / enclose
    return coeff['class'] * (pos - neg) + coeff['bbox'] * l1 - coeff['giou'] * giou


def _total_cost(cost, src, tgt):
    return sum(cost[s, t] for s, t in zip(src, tgt))


def test_batched_result_equals_per_image_calls():
    rng = np.random.default_rng(0)
    boxes, logits, gt_bbox, gt_class = _random_case(rng, 3, 7, 5, [2, 4, 3])
    matcher = RTDETRHungarianMatcher(COEFF)
    batched = matcher(boxes, logits, gt_bbox, gt_class)
    assert len(batched) == 3
    for i, (src, tgt) in enumerate(batched):
        single_src, single_tgt = matcher(boxes[i:i + 1], logits[i:i + 1], gt_bbox[i:i + 1],
                                         gt_class[i:i + 1])[0]
        assert src.dtype == paddle.int64 and tgt.dtype == paddle.int64
        assert src.shape == [gt_bbox[i].shape[0]]
        np.testing.assert_array_equal(src.numpy(), single_src.numpy(), err_msg=f'image {i} src')
        np.testing.assert_array_equal(tgt.numpy(), single_tgt.numpy(), err_msg=f'image {i} tgt')
        assert (np.diff(src.numpy()) > 0).all(), f'src not sorted: {src.numpy()}'
        assert sorted(tgt.numpy().tolist()) == list(range(gt_bbox[i].shape[0]))


def test_more_gts_than_queries_matches_every_query():
    rng = np.random.default_rng(1)
    boxes, logits, gt_bbox, gt_class = _random_case(rng, 1, 3, 4, [5])
    src, tgt = RTDETRHungarianMatcher(COEFF)(boxes, logits, gt_bbox, gt_class)[0]
    assert src.numpy().tolist() == [0, 1, 2]
    assert len(set(tgt.numpy().tolist())) == 3


@pytest.mark.parametrize('sizes', [[0, 3, 0], [0, 0, 0]])
def test_empty_targets(sizes):
    rng = np.random.default_rng(2)
    boxes, logits, gt_bbox, gt_class = _random_case(rng, 3, 6, 4, sizes)
    matcher = RTDETRHungarianMatcher(COEFF)
    out = matcher(boxes, logits, gt_bbox, gt_class)
    assert len(out) == 3
    for i, (src, tgt) in enumerate(out):
        assert src.dtype == paddle.int64 and tgt.dtype == paddle.int64
        assert src.shape == [sizes[i]] and tgt.shape == [sizes[i]], f'image {i}: {src.shape}'
    if sum(sizes):
        # the empty neighbours do not change the non-empty image's match
        alone = matcher(boxes[1:2], logits[1:2], gt_bbox[1:2], gt_class[1:2])[0]
        np.testing.assert_array_equal(out[1][0].numpy(), alone[0].numpy())
        np.testing.assert_array_equal(out[1][1].numpy(), alone[1].numpy())


def test_hand_made_case_with_known_assignment():
    # query 0 sits on gt 1 and predicts its class, query 2 on gt 0; query 1 is far from both
    boxes = paddle.to_tensor([[[0.7, 0.7, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.1]]])
    logits = paddle.to_tensor([[[-5.0, 5.0, -5.0], [0.0, 0.0, 0.0], [5.0, -5.0, -5.0]]])
    gt_bbox = [paddle.to_tensor([[0.3, 0.3, 0.2, 0.1], [0.7, 0.7, 0.2, 0.2]])]
    gt_class = [paddle.to_tensor([[0], [1]])]
    for use_focal_loss in (True, False):
        matcher = RTDETRHungarianMatcher(COEFF, use_focal_loss=use_focal_loss)
        src, tgt = matcher(boxes, logits, gt_bbox, gt_class)[0]
        assert src.numpy().tolist() == [0, 2] and tgt.numpy().tolist() == [1, 0], (
            f'focal={use_focal_loss}: {src.numpy()}, {tgt.numpy()}')


def test_class_cost_alone_decides_when_boxes_are_equal():
    # identical boxes everywhere: only the class term can break the tie
    boxes = paddle.full([1, 3, 4], 0.5)
    logits = paddle.to_tensor([[[4.0, -4.0], [-4.0, -4.0], [-4.0, 4.0]]])
    gt_bbox = [paddle.full([2, 4], 0.5)]
    gt_class = [paddle.to_tensor([[1], [0]])]
    src, tgt = RTDETRHungarianMatcher(COEFF)(boxes, logits, gt_bbox, gt_class)[0]
    assert src.numpy().tolist() == [0, 2] and tgt.numpy().tolist() == [1, 0]


def test_minimum_cost_equals_brute_force():
    rng = np.random.default_rng(3)
    num_queries, num_classes, num_gt = 5, 3, 3
    boxes, logits, gt_bbox, gt_class = _random_case(rng, 2, num_queries, num_classes, [num_gt, 2])
    out = RTDETRHungarianMatcher(COEFF)(boxes, logits, gt_bbox, gt_class)
    for i, (src, tgt) in enumerate(out):
        b, lg = boxes.numpy()[i].tolist(), logits.numpy()[i].tolist()
        gb, gc = gt_bbox[i].numpy().tolist(), gt_class[i].numpy().reshape(-1).tolist()
        cost = np.array([[_ref_cost(b[q], lg[q], gb[t], gc[t], COEFF) for t in range(len(gb))]
                         for q in range(num_queries)])
        # every injective assignment of gts to queries
        best = min(
            _total_cost(cost, perm, range(len(gb)))
            for perm in itertools.permutations(range(num_queries), len(gb)))
        got = _total_cost(cost, src.numpy(), tgt.numpy())
        assert abs(got - best) < 1e-4, f'image {i}: matched cost {got} vs brute-force {best}'


def test_matching_carries_no_gradient_and_keeps_inputs():
    rng = np.random.default_rng(4)
    boxes, logits, gt_bbox, gt_class = _random_case(rng, 1, 4, 3, [2])
    boxes.stop_gradient = False
    before = boxes.numpy().copy()
    src, tgt = RTDETRHungarianMatcher(COEFF)(boxes, logits, gt_bbox, gt_class)[0]
    assert src.stop_gradient and tgt.stop_gradient
    np.testing.assert_array_equal(boxes.numpy(), before)
