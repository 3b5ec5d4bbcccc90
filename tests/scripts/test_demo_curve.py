"""The learning-curve parser of the demo reads ppdet's training and COCO-eval log lines."""
import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'demo_curve.py')
# Two epochs; the first evaluation's inference took 20 / 2.0 = 10 s before its FPS line at 13:31:40 and ended
# at 13:31:43 (13 s of evaluation); the second took 20 / 4.0 = 5 s and ended with its FPS line (no best line).
LOG = """\
[11/21 13:29:43] ppdet.engine INFO: Epoch: [0] [ 0/43] learning_rate: 0.000005 loss: 25.9
[11/21 13:31:13] ppdet.engine INFO: Epoch: [0] [40/43] learning_rate: 0.000401 loss: 12.0
[11/21 13:31:30] ppdet.engine INFO: Eval iter: 0
[11/21 13:31:39] ppdet.metrics.coco_utils INFO: Start evaluate...
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.120
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.301
 Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = 0.100
[11/21 13:31:40] ppdet.engine INFO: Total sample number: 20, average FPS: 2.0
[11/21 13:31:43] ppdet.engine INFO: Best test bbox ap is 0.120.
[11/21 13:31:44] ppdet.engine INFO: Epoch: [1] [ 0/43] learning_rate: 0.000431 loss: 10.0
[11/21 13:33:43] ppdet.engine INFO: Eval iter: 0
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.410
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.702
[11/21 13:33:48] ppdet.engine INFO: Total sample number: 20, average FPS: 4.0
"""


def _run(tmp_path, text, *extra):
    log = tmp_path / 'train.log'
    log.write_text(text)
    return log, subprocess.run([sys.executable, SCRIPT, '--log', str(log)] + list(extra),
                               capture_output=True, text=True)


def test_curve_points_exclude_evaluation_time(tmp_path):
    out = tmp_path / 'curve.json'
    _, res = _run(tmp_path, LOG, '--out', str(out))
    assert res.returncode == 0, res.stderr
    curve = json.loads(out.read_text())
    # wall: 13:29:43 -> 13:31:43 = 120 s; training: 13:29:43 -> 13:31:30 (FPS line minus 10 s) = 107 s.
    # second: wall 13:29:43 -> 13:33:48 = 245 s; its evaluation began 5 s earlier; less the first's 13 s
    assert curve['evaluations'] == [
        {'epoch': 1, 'iteration': 43, 'wall_s': 120, 'train_s': 107, 'ap': 0.12, 'ap50': 0.301},
        {'epoch': 2, 'iteration': 86, 'wall_s': 245, 'train_s': 227, 'ap': 0.41, 'ap50': 0.702}]
    assert res.stdout.strip().splitlines()[-1] == \
        'final COCO AP 0.410  AP50 0.702  after 86 iterations, 227 s of training'


def test_plot_is_a_png(tmp_path):
    png = tmp_path / 'curve.png'
    _, res = _run(tmp_path, LOG, '--plot', str(png))
    assert res.returncode == 0, res.stderr
    import numpy as np
    from PIL import Image
    with Image.open(png) as image:
        assert image.format == 'PNG' and image.size == (600, 400)
        pixels = np.asarray(image.convert('RGB')).reshape(-1, 3).astype(int)
    # both curves are drawn, in matplotlib's first two colours (AP50 blue #1f77b4, AP orange #ff7f0e)
    for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (np.abs(pixels - colour).sum(1) < 10).sum() > 100, colour


def test_log_without_evaluation_fails(tmp_path):
    log, res = _run(tmp_path, LOG.splitlines()[0] + '\n')
    assert res.returncode == 1 and f'no COCO evaluation found in {log}' in res.stderr


# A Mask-RT-DETR evaluation: pycocotools' bbox summary, then its segm summary (ppdet's COCO metric with masks)
MASK_LOG = """\
[11/21 13:29:43] ppdet.engine INFO: Epoch: [0] [ 0/43] learning_rate: 0.000005 loss: 25.9
[11/21 13:31:30] ppdet.engine INFO: Eval iter: 0
Evaluate annotation type *bbox*
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.520
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.950
Evaluate annotation type *segm*
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.480
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.910
[11/21 13:31:40] ppdet.engine INFO: Total sample number: 20, average FPS: 2.0
[11/21 13:31:43] ppdet.engine INFO: Best test mask ap is 0.480.
"""


def test_segm_figures_are_kept_apart_from_the_box_ones(tmp_path):
    out = tmp_path / 'curve.json'
    _, res = _run(tmp_path, MASK_LOG, '--out', str(out), '--plot', str(tmp_path / 'curve.png'))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())['evaluations'] == [
        {'epoch': 1, 'iteration': 43, 'wall_s': 120, 'train_s': 107, 'ap': 0.52, 'ap50': 0.95,
         'segm_ap': 0.48, 'segm_ap50': 0.91}]
    assert res.stdout.strip().splitlines()[-1] == \
        'final COCO segm AP 0.480  AP50 0.910, bbox AP 0.520  AP50 0.950  after 43 iterations, 107 s of training'
