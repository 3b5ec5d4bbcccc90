"""Distinct queries in the decoder (`decoder_distinct_iou`): which queries each layer drops, and what the later
layers output for them, checked against loops written here over the same model run with the option off."""
import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.query_distinct import COPY_LOGIT, cap_copies, drop_copies
from ppdet_rtdetr.modeling.transformer import RTDETRDeformableTransformer


def _iou(a, b):
    """IoU of two cxcywh boxes."""
    a = np.concatenate([a[:2] - a[2:] / 2, a[:2] + a[2:] / 2])
    b = np.concatenate([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])
    w = max(0., min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0., min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def _np_drop(scores, boxes, threshold, alive):
    """alive [b, n] after one layer, as a loop: a live query is dropped if a live query of higher score overlaps
    it by IoU > threshold."""
    out = alive.copy()
    for b in range(len(scores)):
        for j in range(scores.shape[1]):
            out[b, j] &= not any(alive[b, k] and scores[b, k] > scores[b, j] and
                                 _iou(boxes[b, k], boxes[b, j]) > threshold for k in range(scores.shape[1]))
    return out


@pytest.mark.parametrize('with_alive', [False, True])
def test_drop_copies_equals_loop(with_alive):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 24))
    # clustered boxes: many pairs overlap by more than 0.5
    centres = rng.uniform(0.3, 0.7, (2, 24, 2)).round(1)
    boxes = np.concatenate([centres + rng.normal(0, 0.02, (2, 24, 2)), rng.uniform(0.15, 0.25, (2, 24, 2))], -1)
    alive = rng.uniform(size=(2, 24)) > 0.3 if with_alive else np.ones((2, 24), bool)
    got = drop_copies(paddle.to_tensor(scores), paddle.to_tensor(boxes), 0.5,
                      paddle.to_tensor(alive) if with_alive else None).numpy()
    want = _np_drop(scores, boxes, 0.5, alive)
    np.testing.assert_array_equal(got, want)
    assert 0 < (alive & ~want).sum() < alive.sum() / 2, 'the data must drop some live queries, not most'
    if with_alive:
        # a dropped query drops nobody: query 1 alone (dead) would have dropped query 0 at IoU 1
        got = drop_copies(paddle.to_tensor([[0., 1.]]), paddle.to_tensor([[[0.5, 0.5, 0.2, 0.2]] * 2]), 0.5,
                          paddle.to_tensor([[True, False]])).numpy()
        assert got.tolist() == [[True, False]]


def test_cap_copies_caps_only_dropped_matching_queries():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 12, size=(2, 5, 3)).astype('float32')  # 2 denoising queries, then 3 matching ones
    alive = np.array([[True, False, True], [False, True, True]])
    got = cap_copies(paddle.to_tensor(logits), paddle.to_tensor(alive), num_dn=2).numpy()
    want = logits.copy()
    for b, j in zip(*np.nonzero(~alive)):
        want[b, 2 + j] = np.minimum(logits[b, 2 + j], COPY_LOGIT)
    np.testing.assert_array_equal(got, want)
    assert (logits[~np.concatenate([np.ones((2, 2), bool), alive], 1)] > COPY_LOGIT).any(), 'something is capped'


def _transformer(decoder_distinct_iou):
    """Three decoder layers on one 6 x 6 level, 12 queries; the box heads' last bias widens every box to about
    half the image, so that neighbouring queries overlap: at IoU 0.5 each layer drops some, not all."""
    paddle.seed(0)
    t = RTDETRDeformableTransformer(num_classes=3, hidden_dim=16, num_queries=12, backbone_feat_channels=[16],
                                    feat_strides=[8], num_levels=1, nhead=2, num_decoder_layers=3,
                                    dim_feedforward=16, num_denoising=6, decoder_distinct_iou=decoder_distinct_iou)
    for head in t.dec_bbox_head:
        head.layers[-1].bias.set_value(paddle.to_tensor([0., 0., 3., 3.]))
    return t


def _run(t, training):
    rng = np.random.default_rng(5)
    feats = [paddle.to_tensor(rng.normal(size=(2, 16, 6, 6)).astype('float32'))]
    gt_meta = {'gt_class': [paddle.to_tensor([[1], [2]], dtype='int32'), paddle.to_tensor([[0]], dtype='int32')],
               'gt_bbox': [paddle.to_tensor([[0.3, 0.3, 0.3, 0.3], [0.6, 0.6, 0.3, 0.2]]),
                           paddle.to_tensor([[0.5, 0.5, 0.4, 0.4]])]}
    t.train() if training else t.eval()
    for layer in t.input_proj.sublayers():
        layer.eval()  # batch statistics would give training another memory than eval
    paddle.seed(1)  # the denoising groups' noise
    with paddle.no_grad():
        out = t(feats, gt_meta=gt_meta)
    return out[0].numpy(), out[1].numpy(), out[4]


def test_decoder_drops_copies_layer_by_layer():
    off = _transformer(0.)
    on = _transformer(0.5)
    on.set_state_dict(off.state_dict())
    boxes, logits, dn_meta = _run(off, training=True)  # [3, b, num_dn + 12, 4 / 3]
    got_boxes, got_logits, _ = _run(on, training=True)
    num_dn = dn_meta['dn_num_split'][0]
    assert num_dn == 12  # 6 denoising boxes -> 3 groups of up to 2 objects, positive and negative
    # the option reads each layer's boxes and changes no box, no denoising output, no live query
    np.testing.assert_array_equal(got_boxes, boxes)
    np.testing.assert_array_equal(got_logits[:, :, :num_dn], logits[:, :, :num_dn])
    alive = np.ones((2, 12), bool)
    np.testing.assert_array_equal(got_logits[0], logits[0])  # layer 0: the encoder's distinct queries
    for i in (1, 2):
        # layer i - 1's boxes and scores drop queries from layer i on
        was_alive = alive
        alive = _np_drop(logits[i - 1, :, num_dn:].max(-1), boxes[i - 1, :, num_dn:], 0.5, alive)
        assert (was_alive & ~alive).any() and alive.any(axis=1).all(), f'layer {i - 1} drops some, not all'
        want = logits[i].copy()
        want[:, num_dn:][~alive] = np.minimum(want[:, num_dn:][~alive], COPY_LOGIT)
        np.testing.assert_array_equal(got_logits[i], want)
        assert (want[:, num_dn:][~alive] < logits[i, :, num_dn:][~alive]).any(), 'a cap changes a logit'
    # eval: the last layer's output, with the same queries dropped
    eval_boxes, eval_logits, _ = _run(on, training=False)
    np.testing.assert_allclose(eval_boxes[0], boxes[2, :, num_dn:], atol=1e-6)
    np.testing.assert_allclose(eval_logits[0], want[:, num_dn:], atol=1e-5)


def test_decoder_distinct_iou_is_checked():
    with pytest.raises(ValueError, match=r'decoder_distinct_iou must be 0 \(off\) or an IoU in \(0, 1\), got 1'):
        _transformer(1)
