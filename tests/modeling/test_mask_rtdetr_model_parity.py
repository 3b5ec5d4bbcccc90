"""Whole Mask-RT-DETR-S (our config of the official model) reproduces the official outputs in float64 with hashinit
weights: backbone, mask hybrid encoder, transformer and post-process (tests/reference/README.md, provenance)."""
import os
import sys

import numpy as np
import paddle

import ppdet_rtdetr  # noqa: F401  (registers modules)
from conftest import REFERENCE, ROOT, fresh_config

S_CFG = os.path.join(ROOT, 'configs', 'mask_rtdetr', 'mask_rtdetr_hgnetv2_s_6x_coco.yml')
TOL = dict(rtol=1e-5, atol=1e-5)


def test_mask_rtdetr_s_matches_official_fp64():
    from ppdet.core.workspace import create
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    import check_golden
    import hashinit
    g = np.load(os.path.join(REFERENCE, 'mask_rtdetr_hgnetv2_s_fp64.npz'))
    cfg = fresh_config(S_CFG, eval_size=[160, 160], pretrain_weights='')
    model = create(cfg.architecture)
    model.eval()
    hashinit.apply_paddle(model)
    cs = hashinit.checksum(hashinit.paddle_shapes(model))
    assert abs(cs - float(g['hashinit_checksum'])) <= 1e-9 * abs(cs), 'state-dict names/shapes differ'
    pp = model.post_process
    pp.num_top_queries = 20
    check_golden.to_fp64(model)
    x = paddle.to_tensor(g['image_u8'].astype('float64') / 255.)
    with paddle.no_grad():
        enc_feats, mask_feat = model.neck(model.backbone({'image': x}))
        logits, boxes, masks, enc_out, init_out, dn_meta = model.transformer((enc_feats, mask_feat), None, None)
    assert init_out is None and dn_meta is None
    stats = [('mask_feat_stats', mask_feat)] + [(f'enc_feat{i}_stats', f) for i, f in enumerate(enc_feats)]
    for name, t in stats:
        a = t.numpy()
        np.testing.assert_allclose([a.mean(), a.std()], g[name], **TOL, err_msg=name)
    for name, got, want in [('enc_boxes (top-300 order)', enc_out[1], g['enc_boxes']),
                            ('enc_score_max', enc_out[0].max(-1), g['enc_score_max']),
                            ('dec_logits', logits[-1], g['dec_logits']),
                            ('dec_boxes', boxes[-1], g['dec_boxes']),
                            ('dec_masks', masks[-1][:, :20], g['dec_masks_first20'])]:
        err = np.abs(got.numpy() - want).max()
        np.testing.assert_allclose(got.numpy(), want, **TOL, err_msg=f'{name}: max abs error {err:.3g}')

    # post-process of both images at once, against the official one image at a time
    head = (boxes[-1].astype('float32'), logits[-1].astype('float32'), masks[-1].astype('float32'))
    im_shape = paddle.to_tensor(np.repeat(g['pp_im_shape'], 2, 0))
    scale_factor = paddle.to_tensor(np.repeat(g['pp_scale_factor'], 2, 0))
    bbox, bbox_num, mask = pp(head, im_shape, scale_factor, [160, 160])
    np.testing.assert_allclose(bbox.numpy(), np.concatenate([g['pp_bbox0'], g['pp_bbox1']]), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(mask.numpy(), np.concatenate([g['pp_mask0'], g['pp_mask1']]))
    assert g['pp_mask0'].sum() > 0
