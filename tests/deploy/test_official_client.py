"""PaddleDetection's own `deploy/python/infer.py` on our exports, its predictor set up the way it does it.

PaddleDetection is not installed here or in CI, so `_official_predictor` makes the same Paddle Inference calls
as its `load_predictor` (release/2.8, the CPU path): `Config(model_dir, 'model')` on Paddle 3, `disable_gpu()`,
`set_cpu_math_library_num_threads`, with --enable_mkldnn `set_mkldnn_cache_capacity(10)` + `enable_mkldnn()`
(without it Paddle's default stays), `disable_glog_info()`, `enable_memory_optim()`,
`switch_use_feed_fetch_ops(False)`, then `create_predictor`; `switch_ir_optim(True)` is on its GPU path only. It
feeds every input by the predictor's input names and reads outputs 0 (boxes) and 1 (boxes_num). On Paddle 3.3.1
`enable_memory_optim()` fails on any PIR program, ours or a one-conv model; `enable_new_executor()` first (what
deploy/README.md tells users to add) makes it run with our deploy script's boxes. It ignores infer_cfg.yml's
`custom_op_library`: a CPU-operator export needs the library registered first.
"""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from helpers.export_utils import ExportCase, assert_same_detections, paddle_infer  # noqa: F401  (fixture)

paddle = pytest.importorskip('paddle')
from paddle.inference import Config, create_predictor  # noqa: E402

MEMORY_OPTIM_ERROR = r'Not find predictor_id \d+ and pass_name memory_optimize_pass'
# what PaddleDetection's own export writes into infer_cfg.yml (ppdet/engine/export_utils.py)
PPDET_INFER_CFG_KEYS = ['mode', 'draw_threshold', 'metric', 'use_dynamic_shape', 'arch', 'min_subgraph_size',
                        'Preprocess', 'label_list']


def _official_predictor(model_dir, new_executor, enable_mkldnn=False, cpu_threads=1):
    config = Config(model_dir, 'model')
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(cpu_threads)
    if enable_mkldnn:
        config.set_mkldnn_cache_capacity(10)
        config.enable_mkldnn()
    config.disable_glog_info()
    if new_executor:
        config.enable_new_executor()  # the one line the official script needs on Paddle 3
    config.enable_memory_optim()
    config.switch_use_feed_fetch_ops(False)
    return create_predictor(config)


def _official_run(predictor, inputs):
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(inputs[name])
    predictor.run()
    names = predictor.get_output_names()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in names[:2]]


def _one_conv_model(save_dir):
    layer = paddle.nn.Conv2D(3, 4, 3)
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 3, 8, 8], 'float32', 'x')],
                                  full_graph=True)
    paddle.jit.save(static, os.path.join(save_dir, 'model'))
    return save_dir


@pytest.mark.parametrize('model', ['export', 'one_conv'])
def test_official_setup_fails_on_paddle3_without_new_executor(model, tmp_path):
    model_dir = ExportCase('default').model_dir if model == 'export' else _one_conv_model(str(tmp_path))
    # the client's failure, not the export's: a one-conv paddle.jit.save model fails the same way
    with pytest.raises(ValueError, match=MEMORY_OPTIM_ERROR):
        _official_predictor(model_dir, new_executor=False)


@pytest.mark.parametrize('mkldnn', [False, True], ids=['default', 'mkldnn'])
@pytest.mark.parametrize('name', ['default', 'dynamic'])
def test_official_setup_with_new_executor_gives_our_boxes(name, mkldnn, paddle_infer):
    case = ExportCase(name)
    predictor = _official_predictor(case.model_dir, new_executor=True, enable_mkldnn=mkldnn)
    ours = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1, enable_mkldnn=True)
    for batch in (1, 3):
        inputs = case.inputs(batch)
        bbox, bbox_num = _official_run(predictor, inputs)
        want_bbox, want_num = ours.predict(inputs)
        np.testing.assert_array_equal(bbox_num, want_num)
        # the same program and oneDNN kernels: bit-equal with --enable_mkldnn (and Paddle 3's default, oneDNN on)
        err = float(np.abs(bbox - want_bbox).max())
        assert err == 0.0, f'{name} batch {batch}: official predictor boxes differ from ours by {err:.2e}'


def test_official_setup_needs_the_operator_library_registered(paddle_infer):
    case = ExportCase('dynamic_cpu_fused')
    # in a fresh process: this one may already have the library registered (other tests, or below)
    here = os.path.dirname(os.path.abspath(__file__))
    code = ('import sys; sys.path[:0] = sys.argv[2:]; from test_official_client import _official_predictor; '
            '_official_predictor(sys.argv[1], new_executor=True)')
    proc = subprocess.run([sys.executable, '-c', code, case.model_dir, here, os.path.dirname(here)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0 and 'kernel output args (0) defs should equal op outputs (1)' in proc.stderr, \
        proc.stderr[-2000:]
    # registered as deploy/README.md says (our deploy/python does the same from infer_cfg.yml)
    paddle_infer.register_custom_ops(case.model_dir)
    predictor = _official_predictor(case.model_dir, new_executor=True, enable_mkldnn=True)
    inputs = case.inputs(2)
    ours = paddle_infer.PaddleDetector(case.model_dir, cpu_threads=1, enable_mkldnn=True)
    want_bbox, want_num = ours.predict(inputs)
    bbox, bbox_num = _official_run(predictor, inputs)
    np.testing.assert_array_equal(bbox_num, want_num)
    np.testing.assert_array_equal(bbox, want_bbox)


def test_our_deploy_reads_an_official_infer_cfg(tmp_path, paddle_infer):
    """A folder as PaddleDetection's export writes it (model.json, model.pdiparams, infer_cfg.yml with ppdet's
    fields only: the baked size comes from the Resize op) runs in deploy/python with the same boxes."""
    case = ExportCase('default')
    folder = str(tmp_path / 'official')
    shutil.copytree(case.model_dir, folder, ignore=shutil.ignore_patterns('*.onnx'))
    with open(os.path.join(folder, 'infer_cfg.yml')) as f:
        infer_cfg = yaml.safe_load(f)
    with open(os.path.join(folder, 'infer_cfg.yml'), 'w') as f:
        yaml.safe_dump({k: infer_cfg[k] for k in PPDET_INFER_CFG_KEYS}, f)
    detector = paddle_infer.PaddleDetector(folder, cpu_threads=1)
    assert detector.image_shape == [3, 64, 96]
    image = cv2.cvtColor(cv2.imread(os.path.join(case.images_dir, 'a_wide.png')), cv2.COLOR_BGR2RGB)
    got = detector.predict_images([image])[0]
    assert_same_detections(got, case.ref['file_a_wide'], what='official infer_cfg.yml')
