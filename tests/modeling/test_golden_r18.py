"""Numeric fidelity: R18vd with hashinit weights reproduces the official outputs (float64 golden)."""
import os

import numpy as np
import paddle

from conftest import ROOT, build_from_config

R18_CFG = os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r18vd_6x_coco.yml')


def test_r18vd_matches_official_fp64(reference_dir):
    import check_golden
    import hashinit
    g = np.load(os.path.join(reference_dir, 'rtdetr_r18vd_golden_fp64.npz'))
    model = build_from_config(R18_CFG)
    model.eval()
    hashinit.apply_paddle(model)
    cs = hashinit.checksum(hashinit.paddle_shapes(model))
    assert abs(cs - float(g['hashinit_checksum'])) <= 1e-9 * abs(cs), 'state-dict names/shapes differ'
    check_golden.to_fp64(model)
    inputs = check_golden.make_inputs(g, 'float64')
    prev = paddle.get_default_dtype()
    paddle.set_default_dtype('float64')
    try:
        with paddle.no_grad():
            boxes, logits, enc = check_golden.default_raw_fn(model, inputs)
            out = model(inputs)
    finally:
        paddle.set_default_dtype(prev)

    topk = np.stack([np.argsort(-enc[b].max(-1), kind='stable')[:300] for b in range(enc.shape[0])])
    np.testing.assert_array_equal(topk, g['enc_topk_index'], err_msg='encoder top-300 query indices differ')
    for name, got, want in [('enc_score_max', enc.max(-1), g['enc_score_max']),
                            ('pred_logits', logits.numpy(), g['pred_logits']),
                            ('pred_boxes', boxes.numpy(), g['pred_boxes'])]:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(out['bbox'].numpy(), g['bbox'], rtol=1e-4, atol=1e-3, err_msg='post-processed bbox')
    np.testing.assert_array_equal(out['bbox_num'].numpy(), g['bbox_num'])
