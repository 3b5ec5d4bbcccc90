"""Options of RTDETRDeformableTransformer each change what they claim: query selection (default, one2many,
agnostic, distinct), learnt_init_query and offset_scale, checked against formulas written here."""
import numpy as np
import paddle
import pytest

from conftest import TINY_CFG, build_from_config
from ppdet_rtdetr.modeling import deformable_attn
from ppdet_rtdetr.modeling.deformable_attn import MSDeformableAttention
from ppdet_rtdetr.modeling.transformer import RTDETRDeformableTransformer


def _transformer(**options):
    """One level of 2 x 3 tokens, hidden 16, 4 queries, 3 classes, no denoising."""
    paddle.seed(0)
    args = dict(num_classes=3, hidden_dim=16, num_queries=4, backbone_feat_channels=[16], feat_strides=[8],
                num_levels=1, nhead=2, num_decoder_layers=1, dim_feedforward=16, num_denoising=0)
    return RTDETRDeformableTransformer(**dict(args, **options))


def _np_select(enc_logits, n, method):
    """Token indices [b, n] of the top-n selection, written with numpy sorts."""
    if method == 'one2many':
        k = enc_logits.shape[-1]
        return np.argsort(-enc_logits.reshape(enc_logits.shape[0], -1), axis=1, kind='stable')[:, :n] // k
    return np.argsort(-enc_logits.max(-1), axis=1, kind='stable')[:, :n]


@pytest.mark.parametrize('method', ['default', 'one2many'])
def test_query_selection_equals_numpy(method):
    rng = np.random.default_rng(0)
    enc_logits = rng.normal(size=(2, 6, 3))
    # token 2 of image 0 is best in every class: one2many selects it once per class, default once
    enc_logits[0, 2] = [5.0, 4.5, 4.0]
    got = _transformer(query_select_method=method)._select_topk(paddle.to_tensor(enc_logits)).numpy()
    want = _np_select(enc_logits, 4, method)
    np.testing.assert_array_equal(got, want)
    assert (got[0] == 2).sum() == (3 if method == 'one2many' else 1), got[0]


def test_agnostic_scores_tokens_with_one_class_free_head():
    t = _transformer(query_select_method='agnostic')
    assert tuple(t.enc_score_head.weight.shape) == (16, 1)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, 6, 1))
    got = t._select_topk(paddle.to_tensor(scores)).numpy()
    np.testing.assert_array_equal(got, np.argsort(-scores[..., 0], axis=1, kind='stable')[:, :4])


def _logit(boxes):
    """The boxes [b, l, 4] in the logit space the transformer hands to the selection (it applies the sigmoid)."""
    return paddle.to_tensor(np.log(boxes / (1 - boxes)))


def _np_distinct(scores, boxes, n, threshold):
    """Token indices [b, n], written as loops: a token is a copy if one of the 4n best-scored tokens scores higher
    and overlaps it by IoU > threshold; the other tokens by score, then the copies by score."""
    out = []
    for s, cxcywh in zip(scores, boxes):
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        order = np.argsort(-s, kind='stable')

        def iou(a, b):
            w = max(0., min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0., min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
            return w * h / union
        copy = {j: any(s[i] > s[j] and iou(xyxy[i], xyxy[j]) > threshold for i in order[:4 * n]) for j in order}
        out.append([j for j in order if not copy[j]] + [j for j in order if copy[j]])
    return np.array(out)[:, :n]


@pytest.mark.parametrize('threshold, l', [(0.3, 32), (0.7, 200)])
def test_distinct_selection_equals_numpy(threshold, l):
    rng = np.random.default_rng(int(threshold * 10))
    enc_logits = rng.normal(size=(2, l, 3))
    # clustered boxes, so that many pairs overlap by more than either threshold
    centres = rng.uniform(0.3, 0.7, (2, l, 2)).round(1)
    boxes = np.concatenate([centres + rng.normal(0, 0.01, (2, l, 2)), rng.uniform(0.15, 0.25, (2, l, 2))], -1)
    t = _transformer(query_distinct_iou=threshold, num_queries=9)
    got = t._select_topk(paddle.to_tensor(enc_logits), _logit(boxes)).numpy()
    want = _np_distinct(enc_logits.max(-1), boxes, 9, threshold)
    np.testing.assert_array_equal(got, want)
    plain = np.argsort(-enc_logits.max(-1), axis=1, kind='stable')[:, :9]
    assert (got != plain).any(), 'the boxes overlap: the selection must differ from the plain top-k'


def test_distinct_selection_takes_one_query_per_object():
    # object A: tokens 0-3 with nearly the same box (two levels), object B: token 4; noise boxes elsewhere
    scores = np.array([[5.0, 4.9, 4.8, 4.7, 1.0, 0.5, 0.4, 0.3]])
    boxes = np.array([[[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.3, 0.31, 0.21, 0.2], [0.3, 0.3, 0.2, 0.19],
                       [0.7, 0.7, 0.1, 0.1], [0.1, 0.9, 0.05, 0.05], [0.9, 0.1, 0.05, 0.05], [0.5, 0.9, 0.05, 0.05]]])
    plain = _transformer(num_queries=3, num_classes=1)._select_topk(paddle.to_tensor(scores[..., None]))
    distinct = _transformer(num_queries=3, num_classes=1, query_distinct_iou=0.7)._select_topk(
        paddle.to_tensor(scores[..., None]), _logit(boxes))
    assert plain.numpy().tolist() == [[0, 1, 2]], 'three queries on object A'
    assert distinct.numpy().tolist() == [[0, 4, 5]], 'one on A, one on B, then the best of the rest'


@pytest.mark.parametrize('options, message', [
    ({'query_distinct_iou': 1.5}, 'query_distinct_iou must be 0 (off) or an IoU in (0, 1), got 1.5'),
    ({'query_distinct_iou': 0.7, 'query_select_method': 'one2many'}, "query_distinct_iou keeps one query per box; "
                                                                      "query_select_method 'one2many' selects a "
                                                                      "token once per class"),
    ({'decoder_distinct_iou': 0.8, 'query_select_method': 'one2many'}, "decoder_distinct_iou keeps one query per "
                                                                        "box"),
    ({'decoder_distinct_iou': -0.5}, 'decoder_distinct_iou must be 0 (off) or an IoU in (0, 1), got -0.5')])
def test_distinct_query_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        _transformer(**options)


def test_unknown_query_selection_is_named():
    with pytest.raises(ValueError, match=r"query_select_method 'best' is not one of \('default', 'one2many', "):
        _transformer(query_select_method='best')


def _batch(seed=0, h=64, w=96):
    rng = np.random.default_rng(seed)
    return {'image': paddle.to_tensor(rng.uniform(0, 1, (2, 3, h, w)).astype('float32')),
            'im_shape': paddle.to_tensor([[h, w]] * 2, dtype='float32'),
            'scale_factor': paddle.to_tensor([[1., 1.]] * 2, dtype='float32'),
            'gt_class': [paddle.to_tensor([[1], [3]], dtype='int32'), paddle.to_tensor([[2]], dtype='int32')],
            'gt_bbox': [paddle.to_tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]),
                        paddle.to_tensor([[0.5, 0.5, 0.4, 0.4]])]}


@pytest.mark.parametrize('method', ['agnostic', 'one2many'])
def test_query_selection_trains_a_step_and_evaluates(method):
    paddle.seed(0)
    model = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'query_select_method': method})
    model.train()
    losses = model(_batch())
    values = {k: float(v) for k, v in losses.items()}
    assert all(np.isfinite(v) for v in values.values()), values
    assert values['loss'] == pytest.approx(sum(v for k, v in values.items() if k != 'loss'), rel=1e-5)
    losses['loss'].backward()
    # the encoder score head is reached only through the encoder's class loss (top-k indices carry no
    # gradient): a gradient there shows the encoder term is trained on the scores the selection used
    head = model.transformer.enc_score_head.weight
    assert head.shape[1] == (1 if method == 'agnostic' else 4)
    assert np.isfinite(head.grad.numpy()).all() and float(head.grad.abs().sum()) > 0
    model.clear_gradients()
    model.eval()
    with paddle.no_grad():
        out = model(_batch(seed=1))
    bbox = out['bbox'].numpy()
    assert out['bbox_num'].numpy().tolist() == [20, 20] and np.isfinite(bbox).all()
    assert set(bbox[:, 0].astype(int)) <= {0, 1, 2, 3} and (np.diff(bbox[:20, 1]) <= 0).all()


@pytest.mark.parametrize('method', ['default', 'one2many'])
def test_inference_boxes_of_the_selected_tokens_equal_the_all_token_head(method):
    """Eval runs the encoder box head on the n selected tokens only; training (and the official code) on all l
    tokens before gathering. The selected boxes are bit-equal."""
    paddle.seed(0)
    t = RTDETRDeformableTransformer(num_classes=5, hidden_dim=64, num_queries=50, backbone_feat_channels=[64, 64],
                                    feat_strides=[8, 16], num_levels=2, nhead=4, num_decoder_layers=1,
                                    dim_feedforward=64, num_denoising=0, query_select_method=method)
    t.eval()
    shapes = [(20, 24), (10, 12)]
    memory = paddle.to_tensor(np.random.default_rng(4).normal(size=(2, 600, 64)).astype('float32'))
    with paddle.no_grad():
        _, ref_unact, _, _ = t._get_decoder_input(memory, shapes)
        anchors, valid = t._anchors(shapes, 'float32')
        output_memory = t.enc_output(memory * valid.astype('float32'))
        ind = t._select_topk(t.enc_score_head(output_memory)).numpy()
        all_tokens = (t.enc_bbox_head(output_memory) + anchors).numpy()  # [b, l, 4]
    want = np.stack([all_tokens[i, ind[i]] for i in range(2)])
    np.testing.assert_array_equal(ref_unact.numpy(), want)


def test_learnt_init_query_feeds_the_embedding_to_the_decoder():
    rng = np.random.default_rng(2)
    # [b, l, c] memory of one 2 x 3 level; two different images
    memory = paddle.to_tensor(rng.normal(size=(2, 6, 16)).astype('float32'))
    learnt, selected = _transformer(learnt_init_query=True), _transformer(learnt_init_query=False)
    assert 'tgt_embed.weight' in learnt.state_dict() and 'tgt_embed.weight' not in selected.state_dict()
    for t in (learnt, selected):
        t.eval()
    target, _, _, _ = learnt._get_decoder_input(memory, [(2, 3)])
    embed = learnt.tgt_embed.weight.numpy()
    np.testing.assert_array_equal(target.numpy(), np.stack([embed, embed]))
    # without it, the target is the selected tokens' encoder features, so it depends on the image
    target, _, _, _ = selected._get_decoder_input(memory, [(2, 3)])
    output_memory = selected.enc_output(memory)
    ind = selected._select_topk(selected.enc_score_head(output_memory)).numpy()
    want = np.stack([output_memory.numpy()[i, ind[i]] for i in range(2)])
    np.testing.assert_allclose(target.numpy(), want, rtol=0, atol=0)


@pytest.mark.parametrize('offset_scale', [0.5, 1.0, 0.25])
def test_offset_scale_scales_the_sampling_offsets(offset_scale, monkeypatch):
    """Sampling location = centre + offset * offset_scale / points of the level * box size (Deformable DETR's
    box form, RT-DETRv2's per-level 1/np)."""
    paddle.seed(0)
    points = [3, 1]
    attn = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=points,
                                 offset_scale=offset_scale)
    rng = np.random.default_rng(3)
    with paddle.no_grad():
        attn.sampling_offsets.weight.set_value(rng.normal(size=attn.sampling_offsets.weight.shape).astype('float32'))
    seen = {}

    def record(value, spatial_shapes, locs, weights, num_points_list, method):
        seen['locs'] = locs.numpy()
        return paddle.zeros([locs.shape[0], locs.shape[1], 8])

    monkeypatch.setattr(deformable_attn, 'ms_deform_attn_core', record)
    query = rng.normal(size=(1, 2, 8)).astype('float32')
    ref = np.array([[[[0.4, 0.5, 0.2, 0.4]], [[0.6, 0.3, 0.1, 0.2]]]], 'float32')  # [b, q, 1, 4]
    attn(paddle.to_tensor(query), paddle.to_tensor(ref), paddle.zeros([1, 6, 8]), [(2, 2), (1, 2)])
    # [b, q, nh * sum(np) * 2] -> [b, q, nh, sum(np), 2]
    offsets = attn.sampling_offsets(paddle.to_tensor(query)).numpy().reshape(1, 2, 2, 4, 2)
    per_point = np.array([1 / 3] * 3 + [1.0]).reshape(1, 1, 1, 4, 1)
    want = ref[:, :, None, :, :2] + offsets * offset_scale * per_point * ref[:, :, None, :, 2:]
    np.testing.assert_allclose(seen['locs'], want, rtol=1e-5, atol=1e-6)


def test_offset_scale_reaches_every_decoder_layer():
    model = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'offset_scale': 1.5})
    assert [layer.cross_attn.offset_scale for layer in model.transformer.decoder.layers] == [1.5, 1.5]
