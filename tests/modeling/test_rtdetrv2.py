"""RT-DETRv2 as options of the v1 model: state-dict layouts, [4, 4, 4] == v1, discrete sampling, per-level points."""
import os

import numpy as np
import paddle
import pytest

from conftest import ROOT, TINY_CFG, build_from_config, model_layout, reference_layout

V1, V2 = os.path.join(ROOT, 'configs', 'rtdetr'), os.path.join(ROOT, 'configs', 'rtdetrv2')




def _with_points_scale(layout, total_points=12):
    """A v1 layout plus RT-DETRv2's num_points_scale buffer in every decoder layer's cross-attention."""
    layers = {k.split('.')[3] for k in layout if k.startswith('transformer.decoder.layers.')}
    return dict(layout, **{f'transformer.decoder.layers.{i}.cross_attn.num_points_scale': (total_points,)
                           for i in layers})


def _diff(got, want):
    return (f'missing {sorted(set(want) - set(got))[:5]}, unexpected {sorted(set(got) - set(want))[:5]}, '
            f'shapes {[(k, got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]][:5]}')


@pytest.mark.parametrize('leaf, ref', [('rtdetrv2_r18vd_120e_coco.yml', 'rtdetrv2_r18vd_paddle_keys.txt'),
                                       ('rtdetrv2_r18vd_dsp_3x_coco.yml', 'rtdetrv2_r18vd_paddle_discrete_keys.txt')])
def test_r18_layout_equals_the_official_v2_checkpoint(leaf, ref):
    got, want = model_layout(build_from_config(os.path.join(V2, leaf))), reference_layout(ref)
    assert got == want, _diff(got, want)


def test_r50_layout_is_v1_r50_plus_points_scale():
    got = model_layout(build_from_config(os.path.join(V2, 'rtdetrv2_r50vd_6x_coco.yml')))
    want = _with_points_scale(reference_layout('rtdetr_r50vd_keys.txt'))
    assert got == want, _diff(got, want)


@pytest.mark.parametrize('v2_leaf, v1_leaf', [('rtdetrv2_r34vd_120e_coco.yml', 'rtdetr_r34vd_6x_coco.yml'),
                                              ('rtdetrv2_r50vd_m_7x_coco.yml', 'rtdetr_r50vd_m_6x_coco.yml'),
                                              ('rtdetrv2_r101vd_6x_coco.yml', 'rtdetr_r101vd_6x_coco.yml')])
def test_other_layouts_are_their_v1_layout_plus_points_scale(v2_leaf, v1_leaf):
    """v1 layouts are checked against the official key lists in test_configs.py."""
    want = _with_points_scale(model_layout(build_from_config(os.path.join(V1, v1_leaf))))
    got = model_layout(build_from_config(os.path.join(V2, v2_leaf)))
    assert got == want, _diff(got, want)


MODEL_KEYS = ('architecture', 'RTDETRDetector', 'RTDETRResNet', 'RTDETRHybridEncoder', 'RTDETRDeformableTransformer',
              'hidden_dim', 'num_classes', 'eval_size')


@pytest.mark.parametrize('dsp, base', [('rtdetrv2_r18vd_dsp_3x_coco.yml', 'rtdetrv2_r18vd_120e_coco.yml'),
                                       ('rtdetrv2_r34vd_dsp_1x_coco.yml', 'rtdetrv2_r34vd_120e_coco.yml'),
                                       ('rtdetrv2_r50vd_dsp_1x_coco.yml', 'rtdetrv2_r50vd_6x_coco.yml'),
                                       ('rtdetrv2_r50vd_m_dsp_3x_coco.yml', 'rtdetrv2_r50vd_m_7x_coco.yml')])
def test_dsp_models_are_their_base_model_with_discrete_sampling(dsp, base):
    """So their layouts are the base's: discrete sampling adds no state (the R18 dsp test above checks that)."""
    from conftest import fresh_config

    def model_cfg(leaf):
        cfg = fresh_config(os.path.join(V2, leaf))
        return {k: dict(cfg[k]) if isinstance(cfg[k], dict) else cfg[k] for k in MODEL_KEYS}
    got, want = model_cfg(dsp), model_cfg(base)
    assert got['RTDETRDeformableTransformer'].pop('cross_attn_method') == 'discrete'
    assert want['RTDETRDeformableTransformer'].pop('cross_attn_method') == 'default'
    assert got == want


def _batch(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return {'image': paddle.to_tensor(rng.uniform(0, 1, (2, 3, h, w)).astype('float32')),
            'im_shape': paddle.to_tensor([[h, w]] * 2, dtype='float32'),
            'scale_factor': paddle.to_tensor([[1., 1.]] * 2, dtype='float32'),
            'gt_class': [paddle.to_tensor([[1], [3]], dtype='int32'), paddle.to_tensor([[0]], dtype='int32')],
            'gt_bbox': [paddle.to_tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]),
                        paddle.to_tensor([[0.5, 0.5, 0.4, 0.5]])]}


def _raw_eval(model, batch):
    """(boxes, logits) of the eval decoder layer, before the post-process."""
    model.eval()
    with paddle.no_grad():
        boxes, logits, *_ = model.transformer(model.neck(model.backbone(batch)))
    return boxes[-1].numpy(), logits[-1].numpy()  # [1, b, n, .] -> [b, n, .]


def test_v2_default_sampling_with_4_points_per_level_equals_v1(reference_dir):
    import hashinit
    v1 = build_from_config(TINY_CFG)
    hashinit.apply_paddle(v1)
    v2 = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'num_decoder_points': [4, 4, 4]})
    missing, unexpected = v2.set_state_dict(v1.state_dict())
    assert unexpected == [] and sorted(missing) == sorted(
        f'transformer.decoder.layers.{i}.cross_attn.num_points_scale' for i in range(2)), (missing, unexpected)
    np.testing.assert_array_equal(v2.transformer.decoder.layers[1].cross_attn.num_points_scale.numpy(),
                                  np.full(12, 0.25, 'float32'))
    batch = _batch()
    for name, a, b in zip(('boxes', 'logits'), _raw_eval(v1, batch), _raw_eval(v2, batch)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=f'{name}: max err {np.abs(a - b).max():.2e}')
    assert np.abs(_raw_eval(v1, batch)[1]).max() > 1e-2, 'degenerate weights: logits are all ~0'


def _nearest_pixel_loop(value, shapes, locs, weights, points):
    """Independent formula: pixel (floor(x * w + 0.5), floor(y * h + 0.5)) clamped to the map, weighted sum."""
    b, _, nh, hc = value.shape
    q = locs.shape[1]
    out = np.zeros((b, q, nh, hc), np.float64)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    first = np.cumsum([0] + points)
    for i in range(b):
        for j in range(q):
            for m in range(nh):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(first[lvl], first[lvl + 1]):
                        x, y = locs[i, j, m, p]
                        px = min(max(int(np.floor(x * w + 0.5)), 0), w - 1)
                        py = min(max(int(np.floor(y * h + 0.5)), 0), h - 1)
                        out[i, j, m] += weights[i, j, m, p] * value[i, starts[lvl] + py * w + px, m]
    return out.reshape(b, q, nh * hc)


def test_discrete_sampling_equals_nearest_pixel_loop():
    from ppdet_rtdetr.modeling.deformable_attn import ms_deform_attn_core
    rng = np.random.default_rng(3)
    shapes, points, b, q, nh, hc = [(5, 7), (3, 4), (2, 3)], [3, 6, 3], 2, 4, 2, 3
    value = rng.standard_normal((b, sum(h * w for h, w in shapes), nh, hc)).astype('float32')
    locs = rng.uniform(-0.2, 1.2, (b, q, nh, sum(points), 2)).astype('float32')  # some outside: clamped
    weights = rng.uniform(0, 1, (b, q, nh, sum(points))).astype('float32')
    got = ms_deform_attn_core(paddle.to_tensor(value), shapes, paddle.to_tensor(locs), paddle.to_tensor(weights),
                              points, method='discrete').numpy()
    want = _nearest_pixel_loop(value, shapes, locs, weights, points)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f'max err {np.abs(got - want).max():.2e}')


@pytest.mark.parametrize('method', ['default', 'discrete'])
def test_per_level_points_3_6_3_build_train_and_eval(method):
    paddle.seed(1)
    model = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'num_decoder_points': [3, 6, 3],
                                                                     'cross_attn_method': method})
    attn = model.transformer.decoder.layers[0].cross_attn
    scale = [1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3
    np.testing.assert_allclose(attn.num_points_scale.numpy(), scale, rtol=1e-7)
    layout = model_layout(model)
    nh = 2
    assert layout['transformer.decoder.layers.1.cross_attn.num_points_scale'] == (12,)
    assert layout['transformer.decoder.layers.1.cross_attn.sampling_offsets.weight'] == (32, nh * 12 * 2)
    assert layout['transformer.decoder.layers.1.cross_attn.attention_weights.weight'] == (32, nh * 12)

    model.train()
    losses = model(_batch())
    assert np.isfinite(float(losses['loss'])), {k: float(v) for k, v in losses.items()}
    losses['loss'].backward()
    offsets = attn.sampling_offsets.weight
    if method == 'default':
        assert offsets.grad is not None and float(offsets.grad.abs().sum()) > 0, 'no gradient to the offsets'
    else:  # the index gather has no gradient with respect to the locations: the offsets stay frozen
        assert offsets.stop_gradient and offsets.grad is None
    grad = attn.attention_weights.weight.grad
    assert grad is not None and np.isfinite(grad.numpy()).all() and float(grad.abs().sum()) > 0

    boxes, logits = _raw_eval(model, _batch())
    # eval equals the matching queries of a training pass (the mask hides the denoising queries from them),
    # with the input projections' batch norms kept in eval mode
    with paddle.no_grad():
        feats = model.neck(model.backbone(_batch()))
        model.transformer.train()
        for layer in model.transformer.sublayers():
            if isinstance(layer, paddle.nn.BatchNorm2D):
                layer.eval()
        dec_bboxes, dec_logits, _, _, dn_meta = model.transformer(feats, gt_meta=_batch())
    num_dn = dn_meta['dn_num_split'][0]
    np.testing.assert_allclose(dec_bboxes[-1].numpy()[:, num_dn:], boxes, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dec_logits[-1].numpy()[:, num_dn:], logits, rtol=1e-4, atol=1e-4)
