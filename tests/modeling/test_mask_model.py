"""Mask-RT-DETR (configs/tests/mask_rtdetr_tiny.yml): batch invariance of eval, the head's training contract, inputs
of any size, and the errors it raises."""
import os

import numpy as np
import paddle
import pytest

import ppdet_rtdetr  # noqa: F401  (registers modules)
from conftest import ROOT, build_from_config
from ppdet_rtdetr.modeling.mask_head import RTDETRMaskHead

TINY = os.path.join(ROOT, 'configs', 'tests', 'mask_rtdetr_tiny.yml')


@pytest.fixture(scope='module')
def model():
    paddle.seed(0)
    m = build_from_config(TINY)
    m.eval()
    return m


def _batch(images, scale_factors):
    n = images.shape[0]
    return {'image': images, 'im_shape': paddle.to_tensor([[64., 96.]] * n),
            'scale_factor': paddle.to_tensor(scale_factors, dtype='float32')}


def test_eval_at_batch_2_equals_each_image_alone(model):
    paddle.seed(1)
    images = paddle.rand([2, 3, 64, 96])
    scales = [[0.5, 0.5], [2.0, 1.5]]  # original sizes 128x192 and 32x64
    with paddle.no_grad():
        both = model(_batch(images, scales))
        alone = [model(_batch(images[i:i + 1], scales[i:i + 1])) for i in range(2)]
    k = 20
    assert both['mask'].shape == [2 * k, 128, 192] and both['mask'].dtype == paddle.int32
    assert alone[1]['mask'].shape == [k, 32, 64]
    np.testing.assert_array_equal(both['bbox_num'].numpy(), [k, k])
    for i, one in enumerate(alone):
        np.testing.assert_allclose(both['bbox'][i * k:(i + 1) * k].numpy(), one['bbox'].numpy(), rtol=1e-5,
                                   atol=1e-4, err_msg=f'image {i} boxes')
        h, w = one['mask'].shape[1:]
        np.testing.assert_array_equal(both['mask'][i * k:(i + 1) * k, :h, :w].numpy(), one['mask'].numpy())
    small = both['mask'][k:].numpy()
    assert (small[:, 32:] == -1).all() and (small[:, :, 64:] == -1).all(), 'outside the smaller image must be -1'
    assert set(np.unique(both['mask'][:k].numpy())) <= {0, 1} and set(np.unique(small[:, :32, :64])) <= {0, 1}


def test_encoder_takes_sizes_that_are_not_multiples_of_8_and_keeps_its_input(model):
    x = paddle.rand([1, 3, 68, 100])  # strides 4 / 8: 17x25 and 9x13, where the official 2x upsample fails
    feats = model.backbone({'image': x})
    before = [f.shape for f in feats]
    with paddle.no_grad():
        enc_feats, mask_feat = model.neck(feats)
    assert [f.shape for f in feats] == before, 'the encoder must not modify its input list'
    assert mask_feat.shape == [1, 8, 17, 25]
    assert [f.shape[2:] for f in enc_feats] == [[9, 13], [5, 7], [3, 4]]


class _Capture:
    def __call__(self, boxes, logits, gt_bbox, gt_class, **kw):
        self.args = dict(boxes=boxes, logits=logits, gt_bbox=gt_bbox, gt_class=gt_class, **kw)
        return {'loss_dummy': boxes.sum()}


def _train_batch():
    return {'image': paddle.rand([2, 3, 64, 96]), 'im_shape': paddle.to_tensor([[64., 96.]] * 2),
            'scale_factor': paddle.to_tensor([[1., 1.]] * 2),
            'gt_class': [paddle.to_tensor([[1], [3]], dtype='int32'), paddle.to_tensor([[0]], dtype='int32')],
            'gt_bbox': [paddle.to_tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.2, 0.2]]),
                        paddle.to_tensor([[0.4, 0.4, 0.5, 0.5]])],
            'gt_segm': [paddle.ones([2, 64, 96], 'uint8'), paddle.zeros([1, 64, 96], 'uint8')]}


def test_head_hands_the_criterion_the_official_stacks():
    paddle.seed(2)
    m = build_from_config(TINY)
    m.train()
    capture = _Capture()
    m.detr_head.loss = capture
    batch = _train_batch()
    out = m.transformer(m.neck(m.backbone(batch)), None, batch)
    dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta = out
    m.detr_head(out, None, batch)
    a = capture.args
    num_dn, n = dn_meta['dn_num_split']
    assert (num_dn, n) == (10, 20) and dn_meta['dn_num_group'] == 5  # g = 2 padded gts, 10 // 2 groups
    # [encoder, initial, decoder layers 0, 1] of the matching queries
    assert a['boxes'].shape == [4, 2, n, 4] and a['logits'].shape == [4, 2, n, 4]
    assert a['masks'].shape == [4, 2, n, 16, 24]
    np.testing.assert_array_equal(a['boxes'][0].numpy(), enc_out[1].numpy())
    np.testing.assert_array_equal(a['masks'][1].numpy(), init_out[2][:, num_dn:].numpy())
    np.testing.assert_array_equal(a['logits'][2:].numpy(), dec_logits[:, :, num_dn:].numpy())
    # [initial, decoder layers 0, 1] of the denoising queries
    assert a['dn_out_bboxes'].shape == [3, 2, num_dn, 4] and a['dn_out_masks'].shape == [3, 2, num_dn, 16, 24]
    np.testing.assert_array_equal(a['dn_out_bboxes'][0].numpy(), init_out[1][:, :num_dn].numpy())
    np.testing.assert_array_equal(a['dn_out_logits'][1:].numpy(), dec_logits[:, :, :num_dn].numpy())
    assert [g.dtype for g in a['gt_mask']] == [paddle.float32] * 2 and a['dn_meta'] is dn_meta
    # positives: the real gts of each group (image 1 has one gt of g = 2 slots)
    np.testing.assert_array_equal(dn_meta['dn_positive_idx'][1].numpy(), np.arange(0, 10, 2))


def test_training_without_gt_masks_names_the_missing_transform():
    m = build_from_config(TINY)
    m.train()
    batch = _train_batch()
    del batch['gt_segm']
    with pytest.raises(ValueError, match="needs the 'gt_segm' masks .* Poly2Mask"):
        m.detr_head(m.transformer(m.neck(m.backbone(batch)), None, batch), None, batch)


def test_bad_encoder_options_are_refused():
    from ppdet_rtdetr.modeling.mask_encoder import RTDETRMaskHybridEncoder
    with pytest.raises(ValueError, match='stride-4 level first'):
        RTDETRMaskHybridEncoder(in_channels=[512, 1024, 2048], feat_strides=[8, 16, 32])
    with pytest.raises(ValueError, match=r'use_encoder_idx=\[0\]: level 0'):
        RTDETRMaskHybridEncoder(use_encoder_idx=[0])
    assert isinstance(RTDETRMaskHead(), RTDETRMaskHead)


def test_exclude_post_process_returns_the_raw_mask_logits(model):
    x = paddle.rand([1, 3, 64, 96])
    with paddle.no_grad():
        model.exclude_post_process = True
        try:
            raw = model(_batch(x, [[1., 1.]]))
        finally:
            model.exclude_post_process = False
        feats = model.neck(model.backbone({'image': x}))
        logits, boxes, masks = model.transformer(feats, None, None)[:3]
    np.testing.assert_array_equal(raw['bbox'].numpy(), boxes[-1].numpy())
    np.testing.assert_array_equal(raw['bbox_num'].numpy(), logits[-1].numpy())
    np.testing.assert_array_equal(raw['mask'].numpy(), masks[-1].numpy())
