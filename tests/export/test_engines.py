"""Exported models (tools/export_model.py, paddle2onnx) give the dygraph outputs in every engine.

For each export case (grid_sample at the training size / discrete sampler at another size with raw
outputs / dynamic-size exports of v1 and of v2 + discrete + raw; the distinct-query option in one fixed and
one dynamic case), inputs with per-image scale factors
(fixed: batch 1 and 3; dynamic: batch 2 at three sizes, one predictor or session for all): Paddle Inference
without and with plain `enable_mkldnn()`, and onnxruntime and OpenVINO (float32) on the paddle2onnx conversion
made with no edits.
A dynamic export's reference at each size is a dygraph model built for that size (baked anchors and
position embeddings), so the graph's own anchors and embeddings are checked against the fixed-size ones.
"""
import os

import numpy as np
import pytest

from helpers.export_utils import (CASES, DYNAMIC_CASES, ONNX_CASES, RAW_CASES, ExportCase,  # noqa: F401
                                  assert_same_detections, ort_infer, ov_infer, paddle_infer)

BATCHES = [1, 3]
DYNAMIC_BATCH = 2


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
    return ExportCase(request.param)


@pytest.fixture(scope='module', params=list(ONNX_CASES))
def onnx_case(request):
    return ExportCase(request.param)


def _runs(case):
    """(batch, size) pairs to check, in the order one predictor runs them."""
    if case.name in DYNAMIC_CASES:
        return [(DYNAMIC_BATCH, size) for size in case.sizes]
    return [(batch, case.sizes[0]) for batch in BATCHES]


def _check(detector, case, batch, size, engine):
    inputs = case.inputs(batch, size)
    what = f'{engine} {case.name} batch {batch} at {size[0]}x{size[1]}'
    if detector.raw:
        # the raw outputs themselves, before the deploy scripts' numpy top-k
        boxes, logits = detector._run({'image': inputs['image']})
        for name, got in (('boxes', boxes), ('logits', logits)):
            want = case.at(name, size)[:batch]
            err = float(np.abs(got - want).max())
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f'{what} {name}: max err {err:.2e}')
    bbox, bbox_num = detector.predict(inputs)
    want_bbox, want_num = case.ref_bbox(batch, size)
    np.testing.assert_array_equal(bbox_num, want_num, err_msg=what)
    k = int(want_num[0])
    for i in range(batch):
        assert_same_detections(bbox[i * k:(i + 1) * k], want_bbox[i * k:(i + 1) * k], what=f'{what} image {i}')


@pytest.mark.parametrize('mkldnn', [False, True], ids=['plain', 'mkldnn'])
def test_paddle_inference_matches_dygraph(case, paddle_infer, mkldnn):
    detector = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1, enable_mkldnn=mkldnn)
    for batch, size in _runs(case):  # one predictor: the batch (and a dynamic export's H x W) varies
        _check(detector, case, batch, size, 'paddle-mkldnn' if mkldnn else 'paddle')


def test_onnxruntime_matches_dygraph(onnx_case, ort_infer):
    case = onnx_case
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed (pip install paddle2onnx==2.1.0): no model.onnx')
    detector = ort_infer.OrtDetector(case.model_dir)
    for batch, size in _runs(case):
        _check(detector, case, batch, size, 'onnxruntime')


def test_openvino_matches_dygraph(onnx_case, ov_infer):
    case = onnx_case
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed (pip install paddle2onnx==2.1.0): no model.onnx')
    detector = ov_infer.OpenVINODetector(case.model_dir)  # one compiled model: the batch (and H x W) vary
    for batch, size in _runs(case):
        _check(detector, case, batch, size, 'openvino')


def test_onnx_file_is_opset16_and_sampler_ops(onnx_case):
    case = onnx_case
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (comes with paddle2onnx)')
    path = os.path.join(case.model_dir, 'model.onnx')
    if not os.path.isfile(path):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    model = onnx.load(path)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get('', opsets.get('ai.onnx')) == 16, f'opset {opsets}'
    ops = {node.op_type for node in model.graph.node}
    # the discrete sampler exists for engines without GridSample (TensorRT < 8.5, opset < 16)
    grid_sample = not any('discrete' in arg for arg in CASES[case.name])
    assert ('GridSample' in ops) == grid_sample, f'{case.name}: GridSample in ops is {"GridSample" in ops}'
    assert [i.name for i in model.graph.input] == (['image'] if case.name in RAW_CASES
                                                   else ['image', 'im_shape', 'scale_factor'])
    # H and W of a dynamic-size export are symbolic in the ONNX input too (the batch always is)
    dims = [d.dim_value if d.HasField('dim_value') else -1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    want = [-1, 3, -1, -1] if case.name in DYNAMIC_CASES else [-1, 3] + list(case.sizes[0])
    assert dims == want, f'{case.name}: ONNX image input {dims}, expected {want}'
