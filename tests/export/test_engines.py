"""Exported models (tools/export_model.py, paddle2onnx) give the dygraph outputs in every engine.

For each export case (grid_sample at the training size / discrete sampler at another size with raw
outputs), batch 1 and 3 of inputs with per-image scale factors: Paddle Inference without and with plain
`enable_mkldnn()`, and onnxruntime on the paddle2onnx conversion made with no edits.
"""
import os

import numpy as np
import pytest

from helpers.export_utils import CASES, ExportCase, assert_same_detections, ort_infer, paddle_infer  # noqa: F401

BATCHES = [1, 3]


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
    return ExportCase(request.param)


def _check(detector, case, batch, engine):
    inputs = case.inputs(batch)
    what = f'{engine} {case.name} batch {batch}'
    if detector.raw:
        # the raw outputs themselves, before the deploy scripts' numpy top-k
        boxes, logits = detector._run({'image': inputs['image']})
        for name, got in (('boxes', boxes), ('logits', logits)):
            want = case.ref[name][:batch]
            err = float(np.abs(got - want).max())
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f'{what} {name}: max err {err:.2e}')
    bbox, bbox_num = detector.predict(inputs)
    want_bbox, want_num = case.ref_bbox(batch)
    np.testing.assert_array_equal(bbox_num, want_num, err_msg=what)
    k = int(want_num[0])
    for i in range(batch):
        assert_same_detections(bbox[i * k:(i + 1) * k], want_bbox[i * k:(i + 1) * k], what=f'{what} image {i}')


@pytest.mark.parametrize('mkldnn', [False, True], ids=['plain', 'mkldnn'])
def test_paddle_inference_matches_dygraph(case, paddle_infer, mkldnn):
    detector = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1, enable_mkldnn=mkldnn)
    for batch in BATCHES:  # one predictor: the batch dimension is dynamic
        _check(detector, case, batch, 'paddle-mkldnn' if mkldnn else 'paddle')


def test_onnxruntime_matches_dygraph(case, ort_infer):
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed (pip install paddle2onnx==2.1.0): no model.onnx')
    detector = ort_infer.OrtDetector(case.model_dir)
    for batch in BATCHES:
        _check(detector, case, batch, 'onnxruntime')


def test_onnx_file_is_opset16_and_sampler_ops(case):
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (comes with paddle2onnx)')
    path = os.path.join(case.model_dir, 'model.onnx')
    if not os.path.isfile(path):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    model = onnx.load(path)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get('', opsets.get('ai.onnx')) == 16, f'opset {opsets}'
    ops = {node.op_type for node in model.graph.node}
    # the discrete sampler exists for engines without GridSample (TensorRT < 8.5, opset < 16)
    assert ('GridSample' in ops) == (case.name == 'default'), f'{case.name}: GridSample in ops is {"GridSample" in ops}'
    assert [i.name for i in model.graph.input] == (['image'] if case.name == 'discrete_raw'
                                                   else ['image', 'im_shape', 'scale_factor'])
