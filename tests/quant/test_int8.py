"""tools/quantize.py and ppdet_rtdetr.quant: the INT8 folder runs in deploy/onnxruntime/infer.py unchanged, on
onnxruntime's int8 kernels, with the detections the sweep promised; the drift metric against hand-computed cases.

The model is tests/export's `default` case (tiny config, seeded and perturbed weights, 64x96), calibrated on
its three test images.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers.export_utils import IMAGE_SIZES, ROOT, TINY_CFG, ExportCase, load_deploy_module

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install -e ".[onnx]")')
pytest.importorskip('ml_dtypes', reason="onnxruntime's quantizer needs ml_dtypes (pip install -e \".[onnx]\")")

from ppdet_rtdetr.quant import GROUPS, detection_drift, pick_evenly, quantize_export  # noqa: E402

TOLERANCE = 0.02  # tighter than the default: makes the sweep take steps on the tiny model


def test_detection_drift_against_hand_computed_cases():
    ref = [np.array([[1, 0.9, 0, 0, 10, 10], [2, 0.5, 0, 0, 4, 4], [1, 0.1, 50, 50, 60, 60]], 'float32')]
    assert detection_drift(ref, ref)['drift'] == 0
    got = [np.array([[1, 0.8, 0, 0, 10, 5],  # same class, half the box: IoU 0.5, score -0.1
                     [1, 0.7, 20, 20, 30, 30],  # same class, no overlap with the first: not its partner
                     [3, 0.5, 0, 0, 4, 4]], 'float32')]  # another class: class 2 has no partner (IoU 0)
    drift = detection_drift(ref, got, top_k=2)  # compares the two best reference rows only
    # means weighted by the reference scores 0.9 and 0.5
    np.testing.assert_allclose([drift['mean_iou'], drift['min_iou']], [0.9 * 0.5 / 1.4, 0.0], atol=1e-5)
    np.testing.assert_allclose([drift['mean_abs_score_diff'], drift['max_abs_score_diff']],
                               [(0.9 * 0.1 + 0.5 * 0.5) / 1.4, 0.5], atol=1e-5)
    np.testing.assert_allclose(drift['drift'], (0.09 + 0.25) / 1.4 + 1 - 0.45 / 1.4, atol=1e-5)


def test_pick_evenly_spreads_over_the_list():
    assert pick_evenly(list(range(10)), 4) == [0, 2, 5, 7]
    assert pick_evenly([3, 1], 5) == [3, 1]
    with pytest.raises(ValueError, match='must be positive, got 0'):
        pick_evenly([1], 0)


def _quantize(case, out, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'quantize.py'), '-c', TINY_CFG,
                           '--model_dir', case.model_dir, '--output_dir', out, '--calib_dir', case.images_dir,
                           '--calib_images', '3', '--cpu_threads', '1'] + list(args),
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope='module')
def int8_case(tmp_path_factory):
    """(export case, INT8 folder written by tools/quantize.py with its sensitivity sweep)."""
    case = ExportCase('default')
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    out = str(tmp_path_factory.mktemp('int8') / 'rtdetr_tiny_int8')
    _quantize(case, out, '--tolerance', str(TOLERANCE))
    return case, out


def _yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def test_infer_cfg_says_what_the_file_is(int8_case):
    case, out = int8_case
    fp32_cfg, cfg = _yaml(os.path.join(case.model_dir, 'infer_cfg.yml')), _yaml(os.path.join(out, 'infer_cfg.yml'))
    quant = cfg.pop('quantization')
    assert cfg == fp32_cfg, 'the export fields must be kept as they are'
    assert (quant['precision'], quant['engine'], quant['reduce_range']) == ('int8', 'onnxruntime', False)
    assert quant['calibration'] == {'images': 3, 'source': f'3 images of {case.images_dir}', 'method': 'MinMax'}
    assert sorted(os.listdir(out)) == ['infer_cfg.yml', 'model.onnx', 'quant_report.json']
    # the sweep's rule: from all-INT8, the group with the largest drift alone goes back to float32, then the
    # next, until the model's drift is within the tolerance
    with open(os.path.join(out, 'quant_report.json')) as f:
        report = json.load(f)
    assert set(report['drift_alone']) <= set(GROUPS)
    ranked = sorted(report['drift_alone'], key=lambda g: -report['drift_alone'][g]['drift'])
    steps = report['steps']
    assert [s['fp32_groups'] for s in steps] == [ranked[:i] for i in range(len(steps))]
    assert all(s['drift']['drift'] > TOLERANCE for s in steps[:-1])
    assert steps[-1]['drift']['drift'] <= TOLERANCE or len(steps) == len(ranked) + 1
    assert sorted(quant['fp32_groups']) == sorted(steps[-1]['fp32_groups'])
    assert quant['drift_on_calibration_images'] == steps[-1]['drift']
    assert quant['fp32_nodes'] == sum(report['groups'][g] for g in quant['fp32_groups'])


# the onnxruntime kernel each quantized op type must become (a QDQ group it could not fuse would run in float32
# with extra (de)quantization instead); MatMul outputs are float32, hence MatMulIntegerToFloat
INT8_KERNELS = {'Conv': ('QLinearConv',), 'MatMul': ('MatMulIntegerToFloat', 'QLinearMatMul'), 'Add': ('QLinearAdd',),
                'Mul': ('QLinearMul',), 'Sigmoid': ('QLinearSigmoid',), 'AveragePool': ('QLinearAveragePool',),
                'MaxPool': ('NhwcMaxPool',)}


def test_int8_kernels_run(int8_case, tmp_path):
    """With every group quantized, each quantized op runs on onnxruntime's int8 kernel (the VNNI ones for Conv /
    MatMul), no ReLU is left, and the feature maps of the backbone and CCFM stay uint8 between convolutions (the
    Concats too)."""
    onnx = pytest.importorskip('onnx')
    case, _ = int8_case
    out = str(tmp_path / 'all_int8')
    _quantize(case, out, '--fp32_groups')
    with open(os.path.join(out, 'quant_report.json')) as f:
        quantized = json.load(f)['quantized_op_types']
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / 'optimized.onnx')
    options.log_severity_level = 3
    ort.InferenceSession(os.path.join(out, 'model.onnx'), options, providers=['CPUExecutionProvider'])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    fp32_ops = [n.op_type for n in onnx.load(os.path.join(case.model_dir, 'model.onnx'),
                                             load_external_data=False).graph.node]
    assert set(INT8_KERNELS) | {'Relu', 'Concat'} <= set(quantized), quantized
    for op_type, kernels in INT8_KERNELS.items():
        assert sum(ops.count(k) for k in kernels) == quantized[op_type], (op_type, sorted(set(ops)))
    # no ReLU runs: the quantizer drops the quantized ones, onnxruntime the rest (each before a QuantizeLinear
    # whose uint8 range starts at 0, in the decoder's FFN)
    assert fp32_ops.count('Relu') > quantized['Relu'] > 0 and ops.count('Relu') == 0
    assert ops.count('QLinearConcat') >= quantized['Concat']


def test_deploy_script_runs_it_within_the_recorded_drift(int8_case, tmp_path):
    """deploy/onnxruntime/infer.py, unchanged, on the INT8 folder: its detections against the float32 (dygraph)
    ones move by what infer_cfg.yml records (measured there through the config's reader), at most TOLERANCE."""
    case, out = int8_case
    ort_infer = load_deploy_module('onnxruntime/infer.py', 'deploy_ort_infer_int8')
    results = ort_infer.main(['--model_dir', out, '--image_dir', case.images_dir, '--batch_size', '2',
                              '--threshold', '0', '--output_dir', str(tmp_path / 'out')])
    got = {os.path.splitext(os.path.basename(r['image']))[0]:
           np.array([[d['class_id'], d['score']] + d['bbox'] for d in r['detections']], 'float32') for r in results}
    names = sorted(IMAGE_SIZES)
    drift = detection_drift([case.ref[f'file_{n}'] for n in names], [got[n] for n in names])
    recorded = _yaml(os.path.join(out, 'infer_cfg.yml'))['quantization']['drift_on_calibration_images']
    assert drift['drift'] <= TOLERANCE, drift
    assert abs(drift['drift'] - recorded['drift']) < 2e-3, (drift, recorded)
    assert drift['max_abs_score_diff'] < 0.02, drift


def test_refuses_bad_folders(tmp_path):
    case = ExportCase('default')
    with pytest.raises(ValueError, match='--output_dir must differ from --model_dir'):
        quantize_export(case.model_dir, case.model_dir, reader=None, calibration_source='')
    with pytest.raises(ValueError, match=r"unknown fp32 group\(s\) \['head'\]"):
        quantize_export(case.model_dir, str(tmp_path / 'x'), None, '', fp32_groups=['head'])
    with pytest.raises(FileNotFoundError, match='model.onnx not found: convert it first with tools/export_onnx.py'):
        quantize_export(str(tmp_path), str(tmp_path / 'x'), None, '')
