"""Whole-model behaviour on the tiny config: empty-GT training, eval contract, RepVGG fusion, eval_idx."""
import numpy as np
import paddle
import pytest

from conftest import TINY_CFG, build_from_config


def _batch(counts, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    b = len(counts)
    return {
        'image': paddle.to_tensor(rng.uniform(0, 1, (b, 3, h, w)).astype('float32')),
        'im_shape': paddle.to_tensor([[h, w]] * b, dtype='float32'),
        'scale_factor': paddle.to_tensor([[1., 1.]] * b, dtype='float32'),
        'gt_class': [paddle.to_tensor(rng.integers(0, 4, (n, 1)).astype('int32')) for n in counts],
        'gt_bbox': [paddle.to_tensor(np.concatenate([rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))],
                                                    1).astype('float32')) for n in counts],
    }


@pytest.fixture(scope='module')
def model():
    paddle.seed(0)
    return build_from_config(TINY_CFG)


def _np_unmatched_vfl(logits):
    """Varifocal loss of queries that match nothing: alpha * p^gamma * BCE(x, 0), summed."""
    p = 1 / (1 + np.exp(-logits))
    return (0.75 * p**2 * (np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits))))).sum()


@pytest.mark.parametrize('counts', [[2, 0], [0, 0]])
def test_empty_gt_batches_train_with_finite_losses(model, counts):
    model.train()
    seen = {}
    hook = model.transformer.register_forward_post_hook(lambda layer, inputs, out: seen.update(out=out))
    losses = model(_batch(counts))
    hook.remove()
    assert 'loss_class_dn' in losses and 'loss_bbox_aux' in losses
    for k, v in losses.items():
        assert np.isfinite(float(v)), f'{k} = {float(v)}'
    if sum(counts) == 0:
        for k in ('loss_bbox', 'loss_giou', 'loss_bbox_dn', 'loss_giou_aux'):
            assert float(losses[k]) == 0., f'{k} must be 0 without boxes, got {float(losses[k])}'
        # every query is unmatched; the normaliser is clipped to 1 gt, times the groups for denoising
        _, dec_logits, _, _, dn_meta = seen['out']
        num_dn = dn_meta['dn_num_split'][0]
        last = dec_logits[-1].numpy().astype('float64')  # [b, num_dn + n, k]
        for key, part, norm in (('loss_class', last[:, num_dn:], 1.0),
                                ('loss_class_dn', last[:, :num_dn], dn_meta['dn_num_group'])):
            want = _np_unmatched_vfl(part) / norm
            assert abs(float(losses[key]) - want) < 1e-5 * want, f'{key} {float(losses[key])}, numpy {want}'
    losses['loss'].backward()
    grads = [p.grad for p in model.parameters() if not p.stop_gradient]
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)
    # same graph on every rank: the denoising embedding is used even without any box
    assert model.transformer.denoising_class_embed.weight.grad is not None
    model.clear_gradients()


def test_eval_output_contract_and_scaling(model):
    model.eval()
    batch = _batch([1, 1])
    batch['scale_factor'] = paddle.to_tensor([[0.5, 0.5], [64 / 100., 96 / 300.]], dtype='float32')
    with paddle.no_grad():
        out = model(batch)
        boxes, logits = [t.numpy()[-1] for t in model.transformer(model.neck(model.backbone(batch)))[:2]]
    bbox, num = out['bbox'].numpy(), out['bbox_num'].numpy()
    assert num.tolist() == [20, 20] and out['bbox_num'].dtype == paddle.int32
    # numpy: the 20 best (query, class) sigmoid scores, boxes in original pixels (128 x 192 and 100 x 300)
    want = []
    for i, (h, w) in enumerate([(128, 192), (100, 300)]):
        scores = 1 / (1 + np.exp(-logits[i].astype('float64')))  # [n, k]
        cx, cy, bw, bh = boxes[i].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * [w, h, w, h]
        for idx in np.argsort(-scores.ravel(), kind='stable')[:20]:
            want.append([idx % 4, scores.ravel()[idx], *xyxy[idx // 4]])
    want = np.array(want)
    np.testing.assert_array_equal(bbox[:, 0], want[:, 0], err_msg='classes')
    np.testing.assert_allclose(bbox[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-4, err_msg='scores and boxes')


def test_repvgg_fused_equals_unfused(model):
    from ppdet_rtdetr.modeling.layers import RepVggBlock
    model.eval()
    batch = _batch([0])
    with paddle.no_grad():
        before = model(batch)['bbox'].numpy()
        blocks = [m for m in model.sublayers() if isinstance(m, RepVggBlock)]
        assert len(blocks) == 4, f'{len(blocks)} RepVGG blocks: the tiny encoder has 4 CSP layers of 1 block'
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for blk in blocks:
            blk.convert_to_deploy()
        after = model(batch)['bbox'].numpy()
    err = np.abs(before - after).max()
    assert err < 1e-4, f'fused RepVGG changes the output by {err}'
    # restore the unfused module for the other tests
    fresh = build_from_config(TINY_CFG)
    fresh.set_state_dict(state)
    model.__dict__.update(fresh.__dict__)


def test_eval_idx_stops_at_that_layer():
    paddle.seed(0)
    m = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'eval_idx': 0})
    m.eval()
    batch = _batch([0])
    with paddle.no_grad():
        feats = m.neck(m.backbone(batch))
        boxes, logits, _, _, _ = m.transformer(feats)
        m.transformer.decoder.eval_idx = 1
        _, logits_last, _, _, _ = m.transformer(feats)
    assert boxes.shape[0] == 1 and logits.shape[0] == 1
    # each layer has its own score head, so the eval layer shows in the logits
    assert np.abs(logits.numpy() - logits_last.numpy()).max() > 1e-3, 'eval_idx 0 and 1 must differ'


def test_input_smaller_than_the_query_count_is_a_clear_error():
    m = build_from_config(TINY_CFG, RTDETRDeformableTransformer={'num_queries': 200})
    m.eval()
    with pytest.raises(ValueError, match='its feature maps have 126 tokens, fewer than num_queries=200'):
        m(_batch([0]))
