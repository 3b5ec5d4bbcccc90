"""Shared state of tests/export: the tiny config exported once per test process, per case.

Cases (each exported in its own process by export_case.py, with the same seeded random weights):
- `default`: grid_sample sampler at the training size 64x96 (non-square), post-process in the graph;
- `discrete_raw`: the discrete (gather) sampler, trt=True activations, exported at another size, 96x64
  (--image_shape 3 96 64), with exclude_post_process (raw outputs, top-k in the deploy scripts);
- `dynamic`: as `default` with distinct queries (selection and decoder), exported for any size
  (--image_shape 3 -1 -1), checked at 64x96, 96x64 and 128x160;
- `dynamic_v2_raw`: RT-DETRv2 (per-level points [4, 2, 2]), discrete sampler, trt=True, raw outputs, any size;
- `dynamic_cpu_fused`: per-level points [4, 2, 2] with the default sampler on the compiled CPU operator
  (export.cpu_fused_attention), any size: Paddle Inference only (its ONNX conversion is refused).
Five cases cover every option on every engine, fixed and dynamic; each export costs ~20 s of CPU.

Not a conftest.py: a second `conftest` module would replace tests/conftest.py in sys.modules for every test
module collected after it (`from conftest import ...`). The exports are cached at module level instead, so
every test module of one pytest process shares them.
"""
import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CFG = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')
CASES = {
    'default': [],
    'discrete_raw': ['--image_shape', '3', '96', '64', '-o', 'RTDETRDeformableTransformer.cross_attn_method=discrete',
                     'RTDETRDeformableTransformer.query_distinct_iou=0.5', 'trt=True', 'exclude_post_process=True'],
    # distinct queries: Fast NMS on the encoder's boxes, over a token count the input size sets, and on the
    # decoder's (the random weights' small boxes overlap little: at IoU 0.02 some queries drop at 64x96 and 128x160)
    'dynamic': ['--image_shape', '3', '-1', '-1', '-o', 'RTDETRDeformableTransformer.query_distinct_iou=0.7',
                'RTDETRDeformableTransformer.decoder_distinct_iou=0.02'],
    'dynamic_v2_raw': ['--image_shape', '3', '-1', '-1', '-o', 'RTDETRDeformableTransformer.cross_attn_method=discrete',
                       'RTDETRDeformableTransformer.num_decoder_points=[4,2,2]', 'trt=True',
                       'exclude_post_process=True'],
    'dynamic_cpu_fused': ['--image_shape', '3', '-1', '-1', '-o', 'export.cpu_fused_attention=True',
                          'RTDETRDeformableTransformer.num_decoder_points=[4,2,2]'],
}
# Mask-RT-DETR (configs/tests/mask_rtdetr_tiny.yml): masks at the training size and at any size
MASK_CFG = os.path.join(ROOT, 'configs', 'tests', 'mask_rtdetr_tiny.yml')
MASK_CASES = {'mask_fixed': [], 'mask_dynamic': ['--image_shape', '3', '-1', '-1']}
RAW_CASES = ('discrete_raw', 'dynamic_v2_raw')
DYNAMIC_CASES = ('dynamic', 'dynamic_v2_raw', 'dynamic_cpu_fused', 'mask_dynamic')
CPU_FUSED_CASES = ('dynamic_cpu_fused',)
ONNX_CASES = tuple(name for name in CASES if name not in CPU_FUSED_CASES)
IMAGE_SIZES = {'a_wide': (120, 200), 'b_small': (64, 96), 'c_tall': (300, 150)}  # (h, w) of the test images
_EXPORT_ROOTS = {}  # config path -> root


def _write_images(images_dir):
    rng = np.random.RandomState(1)
    os.makedirs(images_dir)
    for name, (h, w) in IMAGE_SIZES.items():
        im = (rng.rand(h, w, 3) * 255).astype('uint8')
        cv2.rectangle(im, (w // 4, h // 5), (w // 2, h // 2), (255, 40, 40), -1)
        cv2.imwrite(os.path.join(images_dir, f'{name}.png'), im)


def export_root(cases=CASES, config=TINY_CFG):
    """Folder with images/ and, per case of `cases` (exports of `config`), `<case>/<config name>/` (the export)
    and `<case>/reference.npz`.

    Built on first use (about 30 s: the cases run side by side) and removed at exit.
    """
    if config in _EXPORT_ROOTS:
        return _EXPORT_ROOTS[config]
    root = tempfile.mkdtemp(prefix='rtdetr_export_')
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _write_images(os.path.join(root, 'images'))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    script = os.path.join(ROOT, 'tests', 'export', 'export_case.py')
    procs = {case: subprocess.Popen([sys.executable, script, os.path.join(root, case), os.path.join(root, 'images'),
                                     '--', '-c', config] + args, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for case, args in cases.items()}
    failures = []
    for case, proc in procs.items():
        log = proc.communicate()[0]
        if proc.returncode != 0:
            failures.append(f'export case {case} failed:\n{log[-4000:]}')
    if failures:
        raise RuntimeError('\n'.join(failures))
    _EXPORT_ROOTS[config] = root
    return root


class ExportCase:
    """An exported folder and its dygraph reference (keys: see export_case.py)."""

    def __init__(self, name):
        config = MASK_CFG if name in MASK_CASES else TINY_CFG
        root = export_root(MASK_CASES, MASK_CFG) if name in MASK_CASES else export_root()
        self.name = name
        self.images_dir = os.path.join(root, 'images')
        self.model_dir = os.path.join(root, name, os.path.splitext(os.path.basename(config))[0])
        self.ref = dict(np.load(os.path.join(root, name, 'reference.npz')))
        self.sizes = [tuple(int(v) for v in s) for s in self.ref['sizes']]  # [0]: the export's default size

    def at(self, key, size=None):
        """Reference array `key` at input size (h, w) (default: the export's default size)."""
        h, w = size or self.sizes[0]
        return self.ref[f'{key}@{h}x{w}']

    def inputs(self, batch, size=None):
        """The first `batch` reference inputs at `size`, as fed to the model."""
        image = self.at('image', size)[:batch]
        h, w = image.shape[2:]
        return {'image': image, 'im_shape': np.array([[h, w]] * batch, 'float32'),
                'scale_factor': self.at('scale_factor', size)[:batch]}

    def ref_bbox(self, batch, size=None):
        """Dygraph (bbox, bbox_num) of the first `batch` reference inputs at `size`."""
        bbox, bbox_num = self.at('bbox', size), self.at('bbox_num', size)
        k = len(bbox) // len(bbox_num)
        return bbox[:batch * k], bbox_num[:batch]

    def ref_mask(self, batch, size=None):
        """Dygraph masks [batch*K, H, W] of the first `batch` reference inputs at `size`, H x W the largest
        original size of those images (the model's output for that batch)."""
        bbox, bbox_num, mask = self.at('bbox', size), self.at('bbox_num', size), self.at('mask', size)
        k = len(bbox) // len(bbox_num)
        scale = self.at('scale_factor', size)[:batch]
        hw = np.floor(np.array(size or self.sizes[0], 'float32') / scale + 0.5).astype(int).max(0)
        return mask[:batch * k, :hw[0], :hw[1]]


def load_deploy_module(relpath, name):
    """Import deploy/<relpath> under `name` (the deploy scripts are not a package; deploy/python holds their
    shared modules, so it goes on sys.path as when a script runs)."""
    python_dir = os.path.join(ROOT, 'deploy', 'python')
    if python_dir not in sys.path:
        sys.path.insert(0, python_dir)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'deploy', relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def match_detections(got, want, rtol=1e-3, score_tol=1e-4, what=''):
    """Rows (class, score, x1, y1, x2, y2) equal up to the order of near-tied scores.

    Every reference row needs its own row in `got` with the same class, a score within score_tol and a box
    within rtol (relative, with an absolute floor of rtol * the largest coordinate). Returns (the index in
    `got` of each reference row's match, the max box error).
    """
    assert got.shape == want.shape, f'{what}: shape {got.shape} != {want.shape}'
    atol = rtol * max(1.0, float(np.abs(want[:, 2:]).max()))
    used, order, worst = set(), [], 0.0
    for i, row in enumerate(want):
        match = [j for j in range(len(got)) if j not in used and got[j, 0] == row[0]
                 and abs(got[j, 1] - row[1]) <= score_tol and np.allclose(got[j, 2:], row[2:], rtol=rtol, atol=atol)]
        nearest = got[np.argmin(np.abs(got[:, 1] - row[1]))]
        assert match, f'{what}: reference row {i} {row.tolist()} has no match (nearest score: {nearest.tolist()})'
        used.add(match[0])
        order.append(match[0])
        worst = max(worst, float(np.abs(got[match[0], 2:] - row[2:]).max()))
    return order, worst


def assert_same_detections(got, want, rtol=1e-3, score_tol=1e-4, what=''):
    """`match_detections` without the matching: returns the max box error."""
    return match_detections(got, want, rtol, score_tol, what)[1]


def assert_same_masks(got, want, min_iou=0.99, what=''):
    """Binary masks [K, H, W] (1 object, 0 not, -1 outside a smaller image of the batch) equal pairwise: the same
    shape, -1 at the same pixels, and each pair exactly equal or with IoU >= min_iou (an engine's bilinear
    arithmetic may flip a pixel whose logit is within rounding of the threshold); the reference must hold some
    mask pixels, so that the test can fail. Returns the number of differing pixels."""
    assert got.shape == want.shape, f'{what}: masks {got.shape} != {want.shape}'
    assert (want == 1).sum() > 0, f'{what}: the reference masks are all empty'
    assert ((got == -1) == (want == -1)).all(), f'{what}: the padding (-1) differs'
    got, want = got == 1, want == 1
    for i, (g, w) in enumerate(zip(got, want)):
        union = int((g | w).sum())
        iou = (g & w).sum() / union if union else 1.0
        assert iou >= min_iou, f'{what}: mask {i} IoU {iou:.4f} < {min_iou} ({int((g ^ w).sum())} pixels differ)'
    return int((got ^ want).sum())


# fixtures shared by the tests of tests/deploy and tests/export (imported there by name)
@pytest.fixture(scope='module')
def paddle_infer():
    return load_deploy_module('python/infer.py', 'deploy_paddle_infer')


@pytest.fixture(scope='module')
def ort_infer():
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install onnxruntime)')
    return load_deploy_module('onnxruntime/infer.py', 'deploy_ort_infer')


@pytest.fixture(scope='module')
def ov_infer():
    pytest.importorskip('openvino', reason='openvino is not installed (pip install -e .[openvino])')
    return load_deploy_module('openvino/infer.py', 'deploy_ov_infer')
