"""deploy/fastdeploy/infer.py (FastDeploy's PaddleDetectionModel, onnxruntime backend) gives deploy/python's boxes.

fastdeploy-python 1.0.7 has wheels for Python <= 3.10 only, so the example runs in another interpreter:
$FASTDEPLOY_PYTHON when it imports fastdeploy, else a cached venv of deploy/fastdeploy/requirements.txt made with a
Python 3.10 from $PATH or pyenv (tests/helpers/venvs.py; ~1-2 min to build the first time). Skipped, naming why,
when neither can be had. Checked on the fixed and the any-size ONNX export.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from helpers.export_utils import ROOT, ExportCase, assert_same_detections, paddle_infer  # noqa: F401  (fixture)
from helpers.venvs import cached_venv, find_python

REQUIREMENTS = os.path.join(ROOT, 'deploy', 'fastdeploy', 'requirements.txt')


@pytest.fixture(scope='module')
def fastdeploy_python():
    python = os.environ.get('FASTDEPLOY_PYTHON')
    if python and subprocess.run([python, '-c', 'import fastdeploy'], capture_output=True).returncode == 0:
        return python
    base = find_python('3.10')
    if base is None:
        pytest.skip('no Python 3.10 on $PATH or in ~/.pyenv/versions (fastdeploy-python 1.0.7 has wheels for '
                    'Python <= 3.10 only); or set FASTDEPLOY_PYTHON to an interpreter with fastdeploy')
    with open(REQUIREMENTS) as f:
        requirements = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    return cached_venv('fastdeploy-1.0.7', requirements, python=base)


@pytest.mark.parametrize('name', ['default', 'dynamic'])
def test_fastdeploy_example_matches_deploy_python(name, fastdeploy_python, paddle_infer, tmp_path):
    case = ExportCase(name)
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    image = os.path.join(case.images_dir, 'a_wide.png')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([fastdeploy_python, os.path.join(ROOT, 'deploy', 'fastdeploy', 'infer.py'), '--model_dir',
                           case.model_dir, '--image_file', image, '--threshold', '0', '--output_dir', str(tmp_path)],
                          capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    got = np.array([[r['class_id'], r['score']] + r['bbox'] for r in rows], 'float32')
    rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
    want = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1).predict_images([rgb])[0]
    err = assert_same_detections(got, want, rtol=1e-4, what=f'fastdeploy on {name}')
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
