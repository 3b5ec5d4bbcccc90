"""RTDETRPostProcess against a numpy top-K written here; the softmax option refuses at construction."""
import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.postprocess import RTDETRPostProcess


def _np_postprocess(boxes, logits, im_shape, scale_factor, top):
    """Rows (class, score, x1, y1, x2, y2) of the `top` best (query, class) sigmoid scores per image."""
    rows = []
    for i in range(boxes.shape[0]):
        h, w = np.floor(im_shape[i] / scale_factor[i] + 0.5)
        cx, cy, bw, bh = boxes[i].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * [w, h, w, h]
        scores = 1 / (1 + np.exp(-logits[i]))  # [n, k]
        k = scores.shape[1]
        order = np.argsort(-scores.ravel(), kind='stable')[:top]
        for idx in order:
            rows.append([idx % k, scores.ravel()[idx], *xyxy[idx // k]])
    return np.array(rows)


def test_topk_over_queries_and_classes_equals_numpy():
    rng = np.random.default_rng(0)
    b, n, k, top = 2, 7, 5, 9
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (b, n, 2)), rng.uniform(0.1, 0.4, (b, n, 2))], -1)
    logits = rng.normal(size=(b, n, k))
    # the single best score of image 0 is in the last class: a post-process that drops a column loses it
    logits[0, 3, k - 1] = 5.0
    im_shape = np.array([[64., 96.], [64., 96.]])
    scale_factor = np.array([[0.5, 0.5], [64 / 100., 96 / 300.]])
    post = RTDETRPostProcess(num_classes=k, num_top_queries=top)
    bbox, bbox_num, _ = post((paddle.to_tensor(boxes, 'float32'), paddle.to_tensor(logits, 'float32')),
                             paddle.to_tensor(im_shape, 'float32'), paddle.to_tensor(scale_factor, 'float32'))
    want = _np_postprocess(boxes, logits, im_shape, scale_factor, top)
    got = bbox.numpy()
    assert bbox_num.numpy().tolist() == [top, top] and bbox_num.dtype == paddle.int32
    assert got[0, :2].tolist() == [k - 1, pytest.approx(1 / (1 + np.exp(-5.0)))], got[0]
    np.testing.assert_array_equal(got[:, 0], want[:, 0], err_msg='classes')
    err = np.abs(got[:, 1:] - want[:, 1:]).max()
    assert err < 1e-4, f'scores / boxes differ from numpy by {err}'


def test_every_class_can_be_selected():
    k = 4
    # query j is confident about class j only
    logits = np.full((1, k, k), -6.0)
    logits[0, np.arange(k), np.arange(k)] = 3.0
    boxes = np.tile([0.5, 0.5, 0.2, 0.2], (1, k, 1))
    post = RTDETRPostProcess(num_classes=k, num_top_queries=k)
    bbox, _, _ = post((paddle.to_tensor(boxes, 'float32'), paddle.to_tensor(logits, 'float32')),
                      paddle.to_tensor([[64., 96.]]), paddle.to_tensor([[1., 1.]]))
    assert sorted(bbox.numpy()[:, 0].tolist()) == list(range(k)), bbox.numpy()[:, 0]


def test_softmax_scores_refuse_at_construction():
    with pytest.raises(ValueError, match=r'RTDETRPostProcess: use_focal_loss=False \(softmax scores with a '
                                         r'background class\) is not supported: RT-DETR has 3 sigmoid class scores'):
        RTDETRPostProcess(num_classes=3, use_focal_loss=False)
