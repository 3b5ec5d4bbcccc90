"""deploy/fastdeploy/infer.py (FastDeploy's PaddleDetectionModel, onnxruntime backend) reproduces dygraph.

fastdeploy-python 1.0.7 has wheels for Python <= 3.10 only, so the example runs in another interpreter:
$FASTDEPLOY_PYTHON, else a pyenv 3.8-3.10 with `fastdeploy` importable. Skipped when there is none.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.export_utils import ROOT, ExportCase, assert_same_detections


def _fastdeploy_python():
    pyenv = os.path.expanduser('~/.pyenv/versions')
    candidates = [os.environ.get('FASTDEPLOY_PYTHON', '')] + [
        python for version in ('3.10', '3.9', '3.8') for python in sorted(glob.glob(f'{pyenv}/{version}.*/bin/python'))]
    for python in filter(os.path.isfile, candidates):
        if subprocess.run([python, '-c', 'import fastdeploy'], capture_output=True).returncode == 0:
            return python
    return None


def test_fastdeploy_example_matches_dygraph(tmp_path):
    python = _fastdeploy_python()
    if python is None:
        pytest.skip('no Python <= 3.10 with fastdeploy-python installed (set FASTDEPLOY_PYTHON)')
    case = ExportCase('default')
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    image = os.path.join(case.images_dir, 'a_wide.png')
    proc = subprocess.run([python, os.path.join(ROOT, 'deploy', 'fastdeploy', 'infer.py'), '--model_dir',
                           case.model_dir, '--image_file', image, '--threshold', '0', '--output_dir', str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    got = np.array([[r['class_id'], r['score']] + r['bbox'] for r in rows], 'float32')
    err = assert_same_detections(got, case.ref['file_a_wide'], what='fastdeploy')
    assert os.path.isfile(str(tmp_path / 'a_wide.png')), f'no drawn image (max box err {err:.2e})'


def test_fastdeploy_example_refuses_a_bad_image_before_building_the_model(tmp_path, monkeypatch):
    """Runs here without FastDeploy: a stand-in module without any FastDeploy class means that reaching
    build_model would be an AttributeError, so the ImageError shows the image is read first."""
    import types

    from helpers.bad_images import write_bad_images
    from helpers.export_utils import load_deploy_module

    monkeypatch.setitem(sys.modules, 'fastdeploy', types.ModuleType('fastdeploy'))
    example = load_deploy_module('fastdeploy/infer.py', 'deploy_fastdeploy_infer')
    reason = write_bad_images(str(tmp_path))['huge.jpg']
    huge = str(tmp_path / 'huge.jpg')
    with pytest.raises(ValueError) as info:
        example.main(['--model_dir', str(tmp_path), '--image_file', huge])
    assert type(info.value).__name__ == 'ImageError' and str(info.value).startswith(f'{huge}: {reason}'), info.value
