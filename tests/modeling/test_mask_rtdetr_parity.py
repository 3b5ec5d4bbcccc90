"""Mask-RT-DETR fidelity: our transformer and post-process reproduce the official code (float64, hashinit weights).

Reference: tests/reference/mask_rtdetr_transformer_fp64.npz (provenance in tests/reference/README.md): the official
``MaskRTDETR`` (hidden 32, 20 queries, 3 decoder layers, 8 prototypes, 5 classes) on a 64x96 input's three levels
(8x12, 4x6, 2x3) and a 16x24 prototype map, batch 2, in eval mode, in training mode without denoising, and in
training mode with denoising under paddle.seed(7); and the official ``DETRPostProcess`` with masks, one image at a
time, on two images of different original sizes.
"""
import os
import sys

import numpy as np
import paddle
import pytest

import ppdet_rtdetr  # noqa: F401  (registers modules)
from conftest import REFERENCE
from ppdet_rtdetr.modeling.mask_postprocess import RTDETRMaskPostProcess
from ppdet_rtdetr.modeling.mask_transformer import RTDETRMaskTransformer, mask_to_box_cxcywh

CFG = dict(num_classes=5, hidden_dim=32, num_queries=20, backbone_feat_channels=[32, 32, 32], feat_strides=[8, 16, 32],
           num_prototypes=8, nhead=4, num_decoder_layers=3, dim_feedforward=64, num_denoising=12,
           label_noise_ratio=0.5, box_noise_scale=1.0)
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope='module')
def ref():
    return np.load(os.path.join(REFERENCE, 'mask_rtdetr_transformer_fp64.npz'))


@pytest.fixture
def model(ref):
    # a fresh model per test: training updates the BN running statistics of input_proj, which eval reads
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    import hashinit
    t = RTDETRMaskTransformer(**CFG)
    hashinit.apply_paddle(t)
    cs = hashinit.checksum(hashinit.paddle_shapes(t))
    assert abs(cs - float(ref['hashinit_checksum'])) <= 1e-9 * abs(cs), 'state-dict names/shapes differ'
    t.to(dtype='float64')
    return t


def _run(model, ref, train, num_denoising=CFG['num_denoising'], seed=None):
    model.train() if train else model.eval()
    model.num_denoising = num_denoising
    if seed is not None:
        paddle.seed(seed)
    feats = [paddle.to_tensor(ref[f'feat{i}']) for i in range(3)]
    gt = {'gt_class': [paddle.to_tensor(ref[f'gt_class{i}']) for i in range(2)],
          'gt_bbox': [paddle.to_tensor(ref[f'gt_bbox{i}'].astype('float32')) for i in range(2)]}
    with paddle.no_grad():
        return model((feats, paddle.to_tensor(ref['mask_feat'])), None, gt if train else None)


def _check(out, ref, tag):
    logits, boxes, masks, enc_out, init_out, dn_meta = out
    # the encoder's top-k order first: boxes of the selected tokens, row by row
    np.testing.assert_allclose(enc_out[1].numpy(), ref[f'{tag}_enc_boxes'], **TOL, err_msg=f'{tag}: encoder top-k')
    for name, got in [('enc_logits', enc_out[0]), ('enc_masks', enc_out[2]), ('dec_logits', logits),
                      ('dec_boxes', boxes), ('dec_masks', masks)]:
        want = ref[f'{tag}_{name}']
        assert tuple(got.shape) == want.shape, f'{tag} {name}: shape {got.shape}, official {want.shape}'
        err = np.abs(got.numpy() - want).max()
        np.testing.assert_allclose(got.numpy(), want, **TOL, err_msg=f'{tag} {name}: max abs error {err:.3g}')
    assert (init_out is None) == (f'{tag}_init_logits' not in ref)
    if init_out is not None:
        for name, got in zip(('logits', 'boxes', 'masks'), init_out):
            np.testing.assert_allclose(got.numpy(), ref[f'{tag}_init_{name}'], **TOL, err_msg=f'{tag} init {name}')
    assert (dn_meta is None) == (f'{tag}_dn_num_split' not in ref)
    if dn_meta is not None:
        assert dn_meta['dn_num_split'] == ref[f'{tag}_dn_num_split'].tolist()
        assert dn_meta['dn_num_group'] == int(ref[f'{tag}_dn_num_group'])
        for i, idx in enumerate(dn_meta['dn_positive_idx']):
            np.testing.assert_array_equal(idx.numpy(), ref[f'{tag}_dn_positive_idx{i}'])


def test_eval_outputs_equal_official(model, ref):
    out = _run(model, ref, train=False)
    assert out[4] is None and out[5] is None
    assert out[0].shape[0] == 1, 'eval stacks the eval layer only'
    _check(out, ref, 'eval')


def test_training_outputs_equal_official(model, ref):
    _check(_run(model, ref, train=True, num_denoising=0), ref, 'train')


def test_training_with_denoising_equals_official_under_the_same_seed(model, ref):
    # the denoising queries' label flips and box noise are drawn in the official order
    _check(_run(model, ref, train=True, seed=7), ref, 'train_dn')


def test_mask_enhanced_boxes_are_float32_in_a_float64_model(model, ref):
    masks = paddle.to_tensor(ref['eval_enc_masks']) > 0
    boxes = mask_to_box_cxcywh(masks)
    assert boxes.dtype == paddle.float32
    # an independent formula: pixel-edge bounding box of each mask, normalised
    m = ref['eval_enc_masks'] > 0
    h, w = m.shape[-2:]
    for b in range(m.shape[0]):
        for q in range(m.shape[1]):
            ys, xs = np.nonzero(m[b, q])
            want = np.zeros(4) if len(xs) == 0 else np.array(
                [(xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h,
                 (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h])
            np.testing.assert_allclose(boxes[b, q].numpy(), want, rtol=1e-6, atol=1e-7, err_msg=f'mask {b},{q}')


def test_empty_mask_gives_a_zero_box():
    mask = paddle.zeros([1, 2, 4, 6], 'bool')
    mask[0, 1, 1:3, 2:5] = True
    # columns 2..4 of 6, rows 1..2 of 4 -> x in [2, 5) / 6, y in [1, 3) / 4
    np.testing.assert_allclose(mask_to_box_cxcywh(mask).numpy(), [[[0, 0, 0, 0], [3.5 / 6, 0.5, 0.5, 0.5]]],
                               rtol=1e-6, atol=0)


def test_postprocess_at_batch_2_equals_official_per_image(model, ref):
    out = _run(model, ref, train=False)
    head = (out[1][-1].astype('float32'), out[0][-1].astype('float32'), out[2][-1].astype('float32'))
    pp = RTDETRMaskPostProcess(num_classes=5, num_top_queries=10)
    bbox, bbox_num, mask = pp(head, paddle.to_tensor(ref['pp_im_shape']), paddle.to_tensor(ref['pp_scale_factor']),
                              [64, 96])
    np.testing.assert_array_equal(bbox_num.numpy(), [10, 10])
    want_bbox = np.concatenate([ref['pp_bbox0'], ref['pp_bbox1']])
    np.testing.assert_allclose(bbox.numpy(), want_bbox, rtol=1e-5, atol=1e-4, err_msg='post-processed boxes')
    m0, m1 = ref['pp_mask0'], ref['pp_mask1']  # [10, 128, 120], [10, 51, 48]
    got = mask.numpy()
    assert got.shape == (20, 128, 120) and got.dtype == np.int32
    np.testing.assert_array_equal(got[:10], m0)
    np.testing.assert_array_equal(got[10:, :51, :48], m1)
    assert (got[10:, 51:] == -1).all() and (got[10:, :, 48:] == -1).all(), 'padding of the smaller image must be -1'
    assert m0.sum() > 0 and m1.sum() > 0

    # one image alone gives its own size, as the official output
    one = tuple(x[1:] for x in head)
    _, _, mask1 = pp(one, paddle.to_tensor(ref['pp_im_shape'][1:]), paddle.to_tensor(ref['pp_scale_factor'][1:]),
                     [64, 96])
    np.testing.assert_array_equal(mask1.numpy(), m1)


def test_postprocess_rejects_an_unknown_decode_type():
    with pytest.raises(ValueError, match="bbox_decode_type 'padded' is not one of"):
        RTDETRMaskPostProcess(bbox_decode_type='padded')


def test_pad_decoding_with_average_mask_score_equals_official(model, ref):
    # a 56x80 image (original 112x100) padded to the 64x96 input: boxes scaled over the padding, masks upsampled
    # by the stride, cropped to the image and resized; scores times the mean mask probability
    out = _run(model, ref, train=False)
    head = (out[1][-1][:1].astype('float32'), out[0][-1][:1].astype('float32'), out[2][-1][:1].astype('float32'))
    pp = RTDETRMaskPostProcess(num_classes=5, num_top_queries=10, bbox_decode_type='pad', use_avg_mask_score=True)
    bbox, _, mask = pp(head, paddle.to_tensor([[56., 80.]]), paddle.to_tensor([[0.5, 0.8]]), [64, 96])
    np.testing.assert_allclose(bbox.numpy(), ref['pad_bbox0'], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(mask.numpy(), ref['pad_mask0'])
    assert mask.shape == [10, 112, 100]
