"""deploy/openvino/infer.py: the command line writes deploy/python's results, and its options are checked.

The engine itself is checked against dygraph with the other engines (tests/export/test_engines.py: every ONNX
case, batches 1 and 3, a dynamic export at three sizes on one compiled model).
"""
import json
import os

import numpy as np
import pytest

from helpers.export_utils import ExportCase, assert_same_detections, ov_infer, paddle_infer  # noqa: F401  (fixtures)


def _results(output_dir):
    with open(os.path.join(output_dir, 'results.json')) as f:
        results = json.load(f)
    return {os.path.basename(r['image']): np.array([[d['class_id'], d['score']] + d['bbox'] for d in r['detections']],
                                                   'float32') for r in results}


@pytest.mark.parametrize('name, size', [('default', None), ('dynamic', ['128', '160'])])
def test_cli_writes_deploy_python_results(name, size, ov_infer, paddle_infer, tmp_path):
    case = ExportCase(name)
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    args = ['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--batch_size', '2', '--threshold', '0']
    args += ['--target_size'] + size if size else []
    ov_infer.main(args + ['--output_dir', str(tmp_path / 'ov')])
    paddle_infer.main(args + ['--output_dir', str(tmp_path / 'paddle')])
    got, want = _results(str(tmp_path / 'ov')), _results(str(tmp_path / 'paddle'))
    assert sorted(got) == sorted(want) and len(got) == 3
    for image in want:
        err = assert_same_detections(got[image], want[image], rtol=1e-4, what=f'openvino {name} {image}')
        assert err < 1e-2, f'{name} {image}: max box error {err:.2e} px'


def test_options_are_checked(ov_infer):
    model_dir = ExportCase('default').model_dir
    with pytest.raises(ValueError, match=r"precision must be one of \('f32', 'bf16', 'f16'\), got 'fp32'"):
        ov_infer.OpenVINODetector(model_dir, precision='fp32')
    with pytest.raises(ValueError, match=r"--device NOSUCH: OpenVINO here has \[.*'CPU'"):
        ov_infer.OpenVINODetector(model_dir, device='nosuch')
    with pytest.raises(FileNotFoundError, match='model.int8.onnx not found: convert it with tools/export_onnx.py'):
        ov_infer.OpenVINODetector(model_dir, model_file=os.path.join(model_dir, 'model.int8.onnx'))
