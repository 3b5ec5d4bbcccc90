"""PaddleX 3.7.2 loads our export folders unchanged: create_model().predict, create_pipeline and the CLI.

PaddleX needs numpy>=1.24 (paddledet 2.6.0 numpy<1.24), so it runs in its own cached venv of
deploy/paddlex/requirements.txt (tests/helpers/venvs.py: ~3 min to build the first time, then reused; the test
skips, naming why, when it cannot be built). Checked on the default (fixed 64x96) and the any-size export, and
on the CPU-operator export after registering its library (what a PaddleX user has to do: PaddleX has no option
for it). Reference: our deploy/python on the same image, with PaddleX's own box handling applied (clipped to the
image, boxes left empty by the clip dropped, score > threshold).
"""
import glob
import json
import os
import subprocess

import cv2
import numpy as np
import pytest
import yaml

from helpers.export_utils import ROOT, ExportCase, assert_same_detections, paddle_infer  # noqa: F401  (fixture)
from helpers.venvs import cached_venv
from paddlex_run import pipeline_config  # tests/deploy: the runner's pipeline, here written for the CLI

REQUIREMENTS = os.path.join(ROOT, 'deploy', 'paddlex', 'requirements.txt')
IMAGE = 'a_wide.png'
CASES = ('default', 'dynamic', 'dynamic_cpu_fused')
RUNNER = os.path.join(ROOT, 'tests', 'deploy', 'paddlex_run.py')


@pytest.fixture(scope='module')
def paddlex_python():
    with open(REQUIREMENTS) as f:
        requirements = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    return cached_venv('paddlex-3.7.2', requirements)


def _env(python):
    # drawing (the CLI's saved image) makes PaddleX download a font unless this names one; offline that fails
    venv = os.path.dirname(os.path.dirname(python))
    fonts = glob.glob(f'{venv}/lib/python*/site-packages/matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf')
    assert fonts, f'no DejaVuSans.ttf in {venv} (paddlex[cv] brings matplotlib, which ships it)'
    font = fonts[0]
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # the venv sees neither ppdet nor this repo
    return dict(env, OMP_NUM_THREADS='1', PADDLE_PDX_LOCAL_FONT_FILE_PATH=font)


def _paddlex_view(rows, image_hw, threshold=0.0):
    """Our (class, score, x1, y1, x2, y2) rows as PaddleX reports them: clipped to the image, emptied boxes and
    scores <= threshold dropped (paddlex/inference/models/object_detection/processors.py)."""
    h, w = image_hw
    out = rows.copy()
    out[:, 2:6] = np.stack([np.maximum(out[:, 2], 0), np.maximum(out[:, 3], 0), np.minimum(out[:, 4], w),
                            np.minimum(out[:, 5], h)], 1)
    keep = (out[:, 1] > threshold) & (out[:, 0] > -1) & (out[:, 4] > out[:, 2]) & (out[:, 5] > out[:, 3])
    return out[keep]


@pytest.fixture(scope='module')
def ours(paddle_infer):
    """{case: (PaddleX view of deploy/python's rows on IMAGE, image path)}."""
    out = {}
    for name in CASES:
        case = ExportCase(name)
        path = os.path.join(case.images_dir, IMAGE)
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        rows = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1).predict_images([image])[0]
        out[name] = (_paddlex_view(rows, image.shape[:2]), path)
    return out


def test_export_folder_has_paddlex_files():
    model_dir = ExportCase('default').model_dir
    for ext in ('json', 'pdiparams'):  # one copy of the bytes under both names
        assert os.path.samefile(os.path.join(model_dir, f'model.{ext}'), os.path.join(model_dir, f'inference.{ext}'))
    with open(os.path.join(model_dir, 'infer_cfg.yml')) as f:
        infer_cfg = yaml.safe_load(f)
    with open(os.path.join(model_dir, 'inference.yml')) as f:
        inference = yaml.safe_load(f)
    assert inference == dict(infer_cfg, Global={'model_name': 'RT-DETR-R18'})  # the tiny config is ResNet-18


def test_create_model_and_pipeline_match_deploy_python(paddlex_python, ours):
    folders = []
    for name in CASES:
        model_dir = ExportCase(name).model_dir
        with open(os.path.join(model_dir, 'infer_cfg.yml')) as f:
            library = yaml.safe_load(f).get('custom_op_library')
        folders.append(model_dir + (f':{os.path.join(model_dir, library)}' if library else ''))
    proc = subprocess.run([paddlex_python, RUNNER, ours['default'][1]] + folders, capture_output=True, text=True,
                          env=_env(paddlex_python))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in CASES:
        for api in ('model', 'pipeline'):
            rows = np.array(got[f'{ExportCase(name).model_dir} {api}'], 'float32')
            err = assert_same_detections(rows, ours[name][0], rtol=1e-4, what=f'PaddleX {api} on {name}')
            assert err < 1e-3, f'PaddleX {api} on {name}: max box error {err:.2e} px'


@pytest.mark.parametrize('name', ['default', 'dynamic'])
def test_paddlex_cli_pipeline_matches_deploy_python(name, paddlex_python, ours, tmp_path):
    model_dir = ExportCase(name).model_dir
    config = tmp_path / 'object_detection.yaml'
    config.write_text(yaml.safe_dump(pipeline_config(model_dir, 'RT-DETR-R18')))
    paddlex_cli = os.path.join(os.path.dirname(paddlex_python), 'paddlex')
    proc = subprocess.run([paddlex_cli, '--pipeline', str(config), '--input', ours[name][1], '--device', 'cpu',
                           '--save_path', str(tmp_path / 'out')], capture_output=True, text=True,
                          env=_env(paddlex_python))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stem = os.path.splitext(IMAGE)[0]
    with open(tmp_path / 'out' / f'{stem}_res.json') as f:
        boxes = json.load(f)['boxes']
    rows = np.array([[b['cls_id'], b['score']] + b['coordinate'] for b in boxes], 'float32')
    assert_same_detections(rows, ours[name][0], rtol=1e-4, what=f'paddlex --pipeline on {name}')
    assert os.path.isfile(tmp_path / 'out' / f'{stem}_res.png')  # drawn with the local font, offline


MASK_RUNNER = """
import json, sys
import numpy as np
import paddlex
model = paddlex.create_model(model_name=sys.argv[3], model_dir=sys.argv[2], device='cpu')
result = next(iter(model.predict(sys.argv[1], threshold=0.0)))
rows = [[b['cls_id'], b['score']] + [float(v) for v in b['coordinate']] for b in result['boxes']]
np.savez(sys.argv[4], rows=np.array(rows, 'float32'), **{f'mask{i}': m for i, m in enumerate(result['masks'])})
"""


def test_mask_export_runs_as_paddlex_instance_segmentation(paddlex_python, paddle_infer, tmp_path):
    """A Mask-RT-DETR export is one of PaddleX's instance-segmentation models (inference.yml names
    Mask-RT-DETR-<size>): its boxes are deploy/python's, and each mask is deploy/python's full-image mask cropped
    to the box as PaddleX crops it (coordinates rounded). With the test model's random weights the mask pixels lie
    outside the boxes, so the crops are compared for their shapes and (empty) contents; the masks themselves equal
    dygraph's in every engine (tests/export/test_mask_engines.py)."""
    case = ExportCase('mask_fixed')
    with open(os.path.join(case.model_dir, 'inference.yml')) as f:
        model_name = yaml.safe_load(f)['Global']['model_name']
    assert model_name.startswith('Mask-RT-DETR-'), model_name
    path = os.path.join(case.images_dir, IMAGE)
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    (rows, masks), = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1).predict_instances([image])
    proc = subprocess.run([paddlex_python, '-c', MASK_RUNNER, path, case.model_dir, model_name,
                           str(tmp_path / 'paddlex.npz')], capture_output=True, text=True, env=_env(paddlex_python))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / 'paddlex.npz')
    keep = (rows[:, 1] > 0) & (rows[:, 0] > -1)  # PaddleX's threshold 0 and padding rows
    assert_same_detections(got['rows'], _paddlex_view(rows[keep], image.shape[:2]), rtol=1e-4,
                           what='PaddleX instance segmentation')
    assert masks.sum() > 0, 'our export drew no mask pixel at all'
    assert len(got.files) == 1 + len(got['rows'])
    for i, row in enumerate(got['rows']):
        # the same detection of ours (boxes equal as checked above), its mask cropped as PaddleX does
        j = int(np.argmin(np.abs(rows[:, 1:] - row[1:]).sum(1)))
        x1, y1, x2, y2 = (int(round(float(v))) for v in row[2:])
        np.testing.assert_array_equal(got[f'mask{i}'], masks[j][y1:y2, x1:x2], err_msg=f'mask {i}')
