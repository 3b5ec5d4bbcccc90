"""The ONNX file is tidy: one symbol per contract axis, nothing dead, valid under the strictest checks.

On every ONNX export case: `onnx.checker` with full_check, strict shape inference (type checks on), the axis
names of ppdet_rtdetr/onnx_clean.py on the declared and on the inferred outputs, and an onnxruntime session
created with its default log level prints no warning (paddle2onnx's raw files printed 35-41 "Removing
initializer" lines). That detections are unchanged is tests/export/test_engines.py's onnxruntime test (same
files against dygraph). The cleaning itself is checked on a hand-made graph.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.export_utils import DYNAMIC_CASES, MASK_CASES, ONNX_CASES, RAW_CASES, ExportCase

onnx = pytest.importorskip('onnx', reason='onnx is not installed (comes with paddle2onnx)')
from onnx import TensorProto, helper  # noqa: E402

from ppdet_rtdetr.onnx_clean import clean_onnx_model  # noqa: E402


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope='module', params=list(ONNX_CASES) + list(MASK_CASES))
def onnx_file(request):
    case = ExportCase(request.param)
    path = os.path.join(case.model_dir, 'model.onnx')
    if not os.path.isfile(path):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    return case, path


def test_export_passes_full_check_and_strict_shape_inference(onnx_file):
    case, path = onnx_file
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    h, w = ('height', 'width') if case.name in DYNAMIC_CASES else case.sizes[0]
    raw = case.name in RAW_CASES
    want_inputs = [['batch', 3, h, w]] + ([] if raw else [['batch', 2], ['batch', 2]])
    assert [_dims(i) for i in model.graph.input] == want_inputs, case.name
    if case.name in MASK_CASES:  # Mask-RT-DETR: a third output, mask [b*K, H, W] at the largest original size
        want_outputs = [['num_boxes', 6], ['batch'], ['num_boxes', 'mask_height', 'mask_width']]
    else:
        k = int(case.ref['logits@%dx%d' % case.sizes[0]].shape[-1])
        n = int(case.ref['boxes@%dx%d' % case.sizes[0]].shape[1])
        want_outputs = [['batch', n, 4], ['batch', n, k]] if raw else [['num_boxes', 6], ['batch']]
    for graph in (model.graph, inferred.graph):
        assert [_dims(o) for o in graph.output] == want_outputs, case.name


def test_onnxruntime_session_prints_no_warning(onnx_file):
    _, path = onnx_file
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    # the default log level (warnings on); onnxruntime writes them to the process's stderr, hence a subprocess
    code = 'import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])'
    proc = subprocess.run([sys.executable, '-c', code, path], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Removing initializer' not in proc.stderr and ':onnxruntime:' not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('name', ['default', 'dynamic_v2_raw'])
def test_cleaning_leaves_the_outputs_bit_equal(name, tmp_path):
    """paddle2onnx's own file and the tidied one give the same bits on the same inputs."""
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    paddle2onnx = pytest.importorskip('paddle2onnx', reason='paddle2onnx is not installed')
    case = ExportCase(name)
    raw_file = str(tmp_path / 'paddle2onnx.onnx')
    paddle2onnx.export(os.path.join(case.model_dir, 'model.json'), os.path.join(case.model_dir, 'model.pdiparams'),
                       raw_file, opset_version=16, enable_onnx_checker=True, optimize_tool='None')
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the untidied file warns about every dead constant
    sessions = [ort.InferenceSession(f, options) for f in (raw_file, os.path.join(case.model_dir, 'model.onnx'))]
    size = case.sizes[-1]
    inputs = case.inputs(3, size)
    feeds = {i.name: inputs[i.name] for i in sessions[0].get_inputs()}
    before, after = (s.run(None, feeds) for s in sessions)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b, err_msg=f'{name} at {size}')


def _toy_model():
    """image [N0, 3, N1, N2] -> mean over W; two Constants, one read only by a dead Add; an initializer also listed as
    an input; another never read; an If whose branch reads an outer Constant."""
    const = lambda name, v: helper.make_node('Constant', [], [name], value=helper.make_tensor(  # noqa: E731
        name + '_t', TensorProto.FLOAT, [1], [v]))
    then_graph = helper.make_graph([helper.make_node('Identity', ['outer'], ['then_out'])], 'then', [],
                                   [helper.make_tensor_value_info('then_out', TensorProto.FLOAT, [1])])
    nodes = [const('dead_c', 1.0), const('outer', 2.0), helper.make_node('Add', ['dead_c', 'dead_c'], ['dead_sum']),
             helper.make_node('ReduceMean', ['image'], ['boxes'], axes=[3], keepdims=0),
             helper.make_node('ReduceMax', ['image'], ['flag_f'], keepdims=0),
             helper.make_node('Cast', ['flag_f'], ['flag'], to=TensorProto.BOOL),
             helper.make_node('If', ['flag'], ['logits'], then_branch=then_graph, else_branch=then_graph)]
    inits = [helper.make_tensor('as_input', TensorProto.FLOAT, [1], [0.0]),
             helper.make_tensor('unused', TensorProto.FLOAT, [1], [0.0])]
    graph = helper.make_graph(
        nodes, 'toy', [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N0', 3, 'N1', None]),
                       helper.make_tensor_value_info('as_input', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('boxes', TensorProto.FLOAT, ['N3', 3, 'N4']),
         helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 16)])


def test_clean_removes_dead_nodes_and_renames_axes():
    model = _toy_model()
    # logits [1] is not a raw export's [b, n, k]: the rank check names it
    with pytest.raises(ValueError, match=r"output 'logits' has 1 axes, the export contract says 3"):
        clean_onnx_model(model, raw=True)
    model = _toy_model()
    model.graph.output[1].type.tensor_type.shape.dim.add()
    model.graph.output[1].type.tensor_type.shape.dim.add()
    clean_onnx_model(model, raw=True)
    assert [n.op_type for n in model.graph.node] == ['Constant', 'ReduceMean', 'ReduceMax', 'Cast', 'If']
    assert [n.output[0] for n in model.graph.node if n.op_type == 'Constant'] == ['outer']  # read by the If branch
    assert [i.name for i in model.graph.input] == ['image'] and not model.graph.initializer
    assert _dims(model.graph.input[0]) == ['batch', 3, 'height', 'width']
    assert _dims(model.graph.output[0]) == ['batch', 3, 'N4']  # only the axes the contract names change
    assert _dims(model.graph.output[1]) == [1, 0, 0]  # a number stays a number
    image = np.random.RandomState(0).randn(2, 3, 4, 5).astype('float32')
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    model.graph.output[1].type.tensor_type.shape.Clear()  # the toy If returns [1]: leave its shape free
    boxes, logits = ort.InferenceSession(model.SerializeToString()).run(None, {'image': image})
    np.testing.assert_allclose(boxes, image.mean(3), rtol=1e-6)
    np.testing.assert_array_equal(logits, [2.0])


def test_clean_refuses_inputs_outside_the_contract():
    model = _toy_model()
    model.graph.input[0].name = 'images'
    with pytest.raises(ValueError, match=r"ONNX inputs \['images'\] are not in the export contract \(image\)"):
        clean_onnx_model(model, raw=True)
