"""The deploy scripts and infer_cfg.yml: boxes land on the original images, the CLI reproduces dygraph,
a size the anchors were not baked for is a clear error, a dynamic-size export runs at the size asked for,
bad or oversize files of a folder are skipped while the others' results are written.

The dygraph references (export_case.py) ran each image alone through ppdet's own TestReader transforms;
the deploy scripts preprocess from infer_cfg.yml, several images of different sizes per batch.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from helpers.bad_images import write_bad_images
from helpers.export_utils import (CASES, CPU_FUSED_CASES, DYNAMIC_CASES, IMAGE_SIZES, ONNX_CASES, RAW_CASES,  # noqa: F401
                                  ROOT, ExportCase, assert_same_detections, ort_infer, paddle_infer)  # fixtures

PPDET_INFER_CFG_KEYS = ['mode', 'draw_threshold', 'metric', 'use_dynamic_shape', 'arch', 'min_subgraph_size',
                        'Preprocess', 'label_list']
EXPORT_SIZES = {'default': [64, 96], 'discrete_raw': [96, 64], 'dynamic': [-1, -1], 'dynamic_v2_raw': [-1, -1],
                'dynamic_cpu_fused': [-1, -1]}
# a dynamic export resizes to TestReader's size by default; TensorRT range: half / twice it, in multiples of 32
DEFAULT_RUN_SIZE = [64, 96]
TRT_RANGE = {'min': [32, 64], 'opt': [64, 96], 'max': [128, 192]}


@pytest.fixture(scope='module')
def default_case():
    return ExportCase('default')


def _image_paths(case):
    return [os.path.join(case.images_dir, f'{name}.png') for name in sorted(IMAGE_SIZES)]


@pytest.mark.parametrize('name', list(CASES))
def test_infer_cfg_has_ppdet_fields_and_export_size(name):
    case = ExportCase(name)
    with open(os.path.join(case.model_dir, 'infer_cfg.yml')) as f:
        cfg = yaml.safe_load(f)
    assert list(cfg)[:len(PPDET_INFER_CFG_KEYS)] == PPDET_INFER_CFG_KEYS, list(cfg)
    dynamic = name in DYNAMIC_CASES
    assert (cfg['arch'], cfg['use_dynamic_shape'], cfg['mode']) == ('DETR', dynamic, 'paddle')
    assert cfg['label_list'] == ['class_0', 'class_1', 'class_2', 'class_3']  # no annotation file: 4 classes
    resize = [op for op in cfg['Preprocess'] if op['type'] == 'Resize']
    run_size = DEFAULT_RUN_SIZE if dynamic else EXPORT_SIZES[name]
    assert resize == [{'type': 'Resize', 'target_size': run_size, 'keep_ratio': False, 'interp': 2}]
    assert cfg['image_shape'] == [3] + EXPORT_SIZES[name]
    assert cfg['exclude_post_process'] == (name in RAW_CASES)
    assert cfg.get('trt_shape_range') == (TRT_RANGE if dynamic else None)
    assert cfg.get('size_divisor') == (32 if dynamic else None)
    library = 'ppdet_rtdetr_cpu_ops.so' if name in CPU_FUSED_CASES else None
    assert cfg.get('custom_op_library') == library
    assert os.path.isfile(os.path.join(case.model_dir, 'ppdet_rtdetr_cpu_ops.so')) == bool(library)


def test_boxes_land_on_each_original_image(default_case, paddle_infer):
    """Three images of different sizes in one batch: each gets its own scale_factor, and its boxes equal
    the dygraph boxes of that image alone (which the post-process scaled to that image's size)."""
    detector = paddle_infer.PaddleDetector(default_case.model_dir)
    images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in _image_paths(default_case)]
    inputs = detector.preprocess(images)
    want_scale = [[64 / h, 96 / w] for h, w in (IMAGE_SIZES[n] for n in sorted(IMAGE_SIZES))]
    np.testing.assert_allclose(inputs['scale_factor'], want_scale, rtol=1e-6)
    dets = detector.predict_images(images)
    for name, det in zip(sorted(IMAGE_SIZES), dets):
        err = assert_same_detections(det, default_case.ref[f'file_{name}'], what=name)
        h, w = IMAGE_SIZES[name]
        cx, cy = (det[:, 2] + det[:, 4]) / 2, (det[:, 3] + det[:, 5]) / 2
        assert (cx >= 0).all() and (cx <= w).all() and (cy >= 0).all() and (cy <= h).all(), \
            f'{name}: box centres outside the {w}x{h} image (max box err {err:.2e})'


def _results_by_image(output_dir):
    with open(os.path.join(output_dir, 'results.json')) as f:
        results = json.load(f)
    return {os.path.splitext(os.path.basename(r['image']))[0]: np.array(
        [[d['class_id'], d['score']] + d['bbox'] for d in r['detections']], 'float32') for r in results}


@pytest.mark.parametrize('engine', ['paddle', 'onnxruntime'])
def test_cli_reproduces_dygraph_detections(engine, tmp_path, request):
    """deploy/*/infer.py --image_dir (batches of 2: one full, one partial) writes the dygraph detections."""
    module = request.getfixturevalue('paddle_infer' if engine == 'paddle' else 'ort_infer')
    for name in CASES if engine == 'paddle' else ONNX_CASES:
        case = ExportCase(name)
        if engine == 'onnxruntime' and not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
            pytest.skip('paddle2onnx is not installed: no model.onnx')
        out = str(tmp_path / name)
        module.main(['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--batch_size', '2',
                     '--threshold', '0', '--output_dir', out])
        got = _results_by_image(out)
        assert sorted(got) == sorted(IMAGE_SIZES)
        for image, det in got.items():
            assert_same_detections(det, case.ref[f'file_{image}'], what=f'{engine} {name} {image}')
            assert cv2.imread(os.path.join(out, f'{image}.png')).shape[:2] == IMAGE_SIZES[image]


@pytest.mark.parametrize('engine', ['paddle', 'onnxruntime'])
def test_bad_images_of_a_folder_are_skipped_and_the_others_written(default_case, engine, tmp_path, request, capsys):
    """A folder mixing the 3 test images with a PNG bomb, a JPEG declaring 65000x65000, truncated / empty /
    text files: one warning per bad file naming it and why, the good images' dygraph detections and drawings
    written, and the summary line counts the skipped files. Batches of 2 stay full across the skipped files."""
    module = request.getfixturevalue('paddle_infer' if engine == 'paddle' else 'ort_infer')
    if engine == 'onnxruntime' and not os.path.isfile(os.path.join(default_case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    folder, out = tmp_path / 'mixed', str(tmp_path / 'out')
    folder.mkdir()
    for path in _image_paths(default_case):
        shutil.copy(path, folder)
    bad = write_bad_images(str(folder))
    module.main(['--model_dir', default_case.model_dir, '--image_dir', str(folder), '--batch_size', '2',
                 '--threshold', '0', '--output_dir', out])
    printed = capsys.readouterr()
    for name, reason in bad.items():
        assert f'WARNING: skipped {folder / name}: {reason}' in printed.err, printed.err
    assert f'results of 3 image(s) written to {out}/results.json; 6 image(s) skipped' in printed.out, printed.out
    batch_sizes = [int(line.split()[0]) for line in printed.out.splitlines() if ' image(s) in ' in line]
    assert batch_sizes == [2, 1], printed.out
    got = _results_by_image(out)
    assert sorted(got) == sorted(IMAGE_SIZES)
    for image, det in got.items():
        assert_same_detections(det, default_case.ref[f'file_{image}'], what=f'{engine} {image}')
    assert sorted(os.listdir(out)) == sorted(['results.json'] + [f'{name}.png' for name in IMAGE_SIZES])


def test_a_bad_image_file_stops_the_script_naming_it(default_case, paddle_infer, tmp_path):
    """--image_file of a bomb: ImageError naming the file and --max_pixels, nothing written; from the command
    line a non-zero exit with that message (onnxruntime's script: no Paddle import, so quick)."""
    bomb = str(tmp_path / 'bomb.png')
    reason = write_bad_images(str(tmp_path))['bomb.png']
    out = tmp_path / 'out'
    with pytest.raises(ValueError) as info:
        paddle_infer.main(['--model_dir', default_case.model_dir, '--image_file', bomb, '--output_dir', str(out)])
    assert (type(info.value).__name__, str(info.value)) == ('ImageError', f'{bomb}: {reason}')
    assert not (out / 'results.json').exists()
    if not os.path.isfile(os.path.join(default_case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'deploy', 'onnxruntime', 'infer.py'), '--model_dir',
                           default_case.model_dir, '--image_file', bomb, '--output_dir', str(out)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0 and proc.stderr.rstrip().endswith(f'ImageError: {bomb}: {reason}'), proc.stderr
    # the flag raises the limit: the bomb is then read (and fails on its truncated data, not on its size)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'deploy', 'onnxruntime', 'infer.py'), '--model_dir',
                           default_case.model_dir, '--image_file', bomb, '--output_dir', str(out), '--max_pixels',
                           '4e8'], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.stderr.rstrip().endswith(f'ImageError: {bomb}: PNG image data cannot be decoded (corrupt or '
                                         'truncated)'), proc.stderr


def test_video_file(default_case, ort_infer, tmp_path):
    video = str(tmp_path / 'clip.avi')
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'MJPG'), 5, (200, 120))
    frame = cv2.imread(os.path.join(default_case.images_dir, 'a_wide.png'))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    results = ort_infer.main(['--model_dir', default_case.model_dir, '--video_file', video, '--batch_size', '2',
                              '--threshold', '0', '--output_dir', str(tmp_path / 'out')])
    assert [r['frame'] for r in results] == [0, 1, 2]
    assert len(results[2]['detections']) == 20, 'the last, partial batch must be run too'
    assert os.path.getsize(str(tmp_path / 'out' / 'clip.mp4')) > 0


@pytest.mark.parametrize('engine', ['paddle', 'onnxruntime'])
def test_wrong_input_size_names_both_sizes(default_case, engine, request):
    module = request.getfixturevalue('paddle_infer' if engine == 'paddle' else 'ort_infer')
    if engine == 'paddle':
        detector = module.PaddleDetector(default_case.model_dir)
    else:
        if not os.path.isfile(os.path.join(default_case.model_dir, 'model.onnx')):
            pytest.skip('paddle2onnx is not installed: no model.onnx')
        detector = module.OrtDetector(default_case.model_dir)
    inputs = {'image': np.zeros([1, 3, 96, 64], 'float32'), 'im_shape': np.array([[96, 64]], 'float32'),
              'scale_factor': np.ones([1, 2], 'float32')}
    with pytest.raises(ValueError, match=r'input image is 96x64 \(HxW\) but this model was exported for 64x96'):
        detector.predict(inputs)


@pytest.mark.parametrize('engine', ['paddle', 'onnxruntime'])
def test_dynamic_export_runs_at_the_target_size(engine, tmp_path, request):
    """--target_size 96 64 (transposed) and 128 160 on one dynamic export: the detections of dygraph models
    built for those sizes, in batches of 2 images of different original sizes."""
    module = request.getfixturevalue('paddle_infer' if engine == 'paddle' else 'ort_infer')
    for name in DYNAMIC_CASES if engine == 'paddle' else [n for n in DYNAMIC_CASES if n in ONNX_CASES]:
        case = ExportCase(name)
        if engine == 'onnxruntime' and not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
            pytest.skip('paddle2onnx is not installed: no model.onnx')
        for h, w in case.sizes[1:]:
            out = str(tmp_path / f'{name}_{h}x{w}')
            module.main(['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--batch_size', '2',
                         '--threshold', '0', '--output_dir', out, '--target_size', str(h), str(w)])
            for image, det in _results_by_image(out).items():
                assert_same_detections(det, case.ref[f'file_{image}@{h}x{w}'], what=f'{engine} {name} {image} {h}x{w}')


def test_keep_ratio_rounds_to_the_stride(paddle_infer, ort_infer, tmp_path):
    """--keep_ratio: each image at its own size, sides multiples of 32, boxes equal to dygraph at that size and
    on the original image (the reference computes the size with its own formula)."""
    case = ExportCase('dynamic')
    detector = paddle_infer.PaddleDetector(case.model_dir, keep_ratio=True)
    for path, name in zip(_image_paths(case), sorted(IMAGE_SIZES)):
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        inputs = detector.preprocess([image])
        h, w = inputs['image'].shape[2:]
        assert h % 32 == 0 and w % 32 == 0, f'{name}: keep-ratio size {h}x{w} is not a multiple of 32'
        np.testing.assert_allclose(inputs['scale_factor'][0], [h / IMAGE_SIZES[name][0], w / IMAGE_SIZES[name][1]],
                                   rtol=1e-6)
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    out = str(tmp_path / 'keep')
    ort_infer.main(['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--threshold', '0',
                    '--output_dir', out, '--keep_ratio'])
    for image, det in _results_by_image(out).items():
        assert_same_detections(det, case.ref[f'file_{image}@keep'], what=f'keep-ratio {image}')


@pytest.mark.parametrize('option', [{'target_size': [96, 64]}, {'keep_ratio': True}])
def test_fixed_export_refuses_a_run_time_size(default_case, paddle_infer, option):
    with pytest.raises(ValueError, match=r'needs a dynamic-size export, and this model was exported for 64x96 '
                                         r'only .* re-export with --image_shape 3 -1 -1'):
        paddle_infer.PaddleDetector(default_case.model_dir, **option)


class _RecordingConfig:
    """Stands in for paddle.inference.Config: records the TensorRT calls (no GPU here)."""

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.setdefault(name, (args, kwargs))


@pytest.mark.parametrize('name', ['default', 'dynamic_v2_raw'])
def test_trt_run_modes_use_the_export_size_range(name, paddle_infer):
    """trt_* run modes: a fixed export's engine takes its one size, a dynamic export's the infer_cfg range
    (min / max / opt image shapes; batch 1 .. --batch_size)."""
    case = ExportCase(name)
    detector = paddle_infer.PaddleDetector(case.model_dir)
    config = _RecordingConfig()
    detector._enable_trt(config, 'trt_fp16', 4)
    assert config.calls['enable_tensorrt_engine'][1]['max_batch_size'] == 4
    lo, hi, opt = config.calls['set_trt_dynamic_shape_info'][0]
    if name == 'default':
        assert (lo['image'], hi['image'], opt['image']) == ([1, 3, 64, 96], [4, 3, 64, 96], [1, 3, 64, 96])
        assert lo['im_shape'] == lo['scale_factor'] == [1, 2] and hi['im_shape'] == [4, 2]
    else:
        assert list(lo) == ['image'], 'a raw export has one input'
        assert (lo['image'], hi['image'], opt['image']) == ([1, 3] + TRT_RANGE['min'], [4, 3] + TRT_RANGE['max'],
                                                            [1, 3] + TRT_RANGE['opt'])
