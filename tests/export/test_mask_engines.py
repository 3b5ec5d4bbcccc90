"""Mask-RT-DETR exports (tools/export_model.py, paddle2onnx) give dygraph's boxes and masks in every engine.

Two exports of configs/tests/mask_rtdetr_tiny.yml with the same seeded random weights: at the training size
(64x96) and for any size (--image_shape 3 -1 -1). Each runs batches of images with different original sizes
(120x200, 64x96, 300x150: the masks of a batch share the largest, each image in its top-left part) through one
predictor or session: the fixed export at batch 1 and 3, the dynamic one at batch 3 and three input sizes.
Dygraph resizes masks with F.interpolate per image, an export with matrix products over the batch, and the mask
encoder's bilinear resizes are matrix products in an export too: masks must be equal or IoU >= 0.99 per instance.
"""
import os

import numpy as np
import pytest

from helpers.export_utils import (MASK_CASES, ExportCase, assert_same_masks, match_detections,  # noqa: F401
                                  ort_infer, paddle_infer)

BATCHES = [1, 3]


@pytest.fixture(scope='module', params=list(MASK_CASES))
def case(request):
    return ExportCase(request.param)


def _runs(case):
    if case.name == 'mask_dynamic':
        return [(3, size) for size in case.sizes]
    return [(batch, case.sizes[0]) for batch in BATCHES]


def _check(detector, case, batch, size, engine):
    what = f'{engine} {case.name} batch {batch} at {size[0]}x{size[1]}'
    bbox, bbox_num, mask = detector.predict(case.inputs(batch, size))
    want_bbox, want_num = case.ref_bbox(batch, size)
    want_mask = case.ref_mask(batch, size)
    np.testing.assert_array_equal(bbox_num, want_num, err_msg=what)
    assert mask.dtype == np.int32 and mask.shape == want_mask.shape, f'{what}: mask {mask.dtype} {mask.shape}'
    k = int(want_num[0])
    for i in range(batch):
        rows = slice(i * k, (i + 1) * k)
        order, _ = match_detections(bbox[rows], want_bbox[rows], what=f'{what} image {i}')
        assert_same_masks(mask[rows][order], want_mask[rows], what=f'{what} image {i}')


def test_infer_cfg_says_mask(case, paddle_infer):
    detector = paddle_infer.PaddleDetector(case.model_dir)
    assert detector.infer_cfg['mask'] is True and detector.with_mask
    assert len(detector.predictor.get_output_names()) == 3


@pytest.mark.parametrize('mkldnn', [False, True], ids=['plain', 'mkldnn'])
def test_paddle_inference_masks_match_dygraph(case, paddle_infer, mkldnn):
    detector = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1, enable_mkldnn=mkldnn)
    for batch, size in _runs(case):
        _check(detector, case, batch, size, 'paddle-mkldnn' if mkldnn else 'paddle')


def test_onnxruntime_masks_match_dygraph(case, ort_infer):
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed (pip install paddle2onnx==2.1.0): no model.onnx')
    detector = ort_infer.OrtDetector(case.model_dir)
    assert len(detector.session.get_outputs()) == 3
    for batch, size in _runs(case):
        _check(detector, case, batch, size, 'onnxruntime')


def test_onnx_file_is_opset16_with_three_outputs(case):
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (comes with paddle2onnx)')
    path = os.path.join(case.model_dir, 'model.onnx')
    if not os.path.isfile(path):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    model = onnx.load(path)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get('', opsets.get('ai.onnx')) == 16, f'opset {opsets}'
    ops = {node.op_type for node in model.graph.node}
    # no Resize (the interp ops have their matrix forms in the export) and no Loop or If over the images
    assert 'MatMul' in ops and not {'Resize', 'Loop', 'If'} & ops, sorted(ops)
    assert len(model.graph.output) == 3
