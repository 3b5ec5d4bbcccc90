"""The learning-curve parser of the demo reads ppdet's training and COCO-eval log lines."""
import os
import subprocess
import sys

from conftest import ROOT

LOG = """\
[11/21 13:29:43] ppdet.engine INFO: Epoch: [0] [ 0/43] learning_rate: 0.000005 loss: 25.9
[11/21 13:31:13] ppdet.engine INFO: Epoch: [0] [40/43] learning_rate: 0.000401 loss: 12.0
[11/21 13:31:30] ppdet.engine INFO: Eval iter: 0
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.120
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.301
 Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = 0.100
[11/21 13:31:40] ppdet.engine INFO: Epoch: [1] [ 0/43] learning_rate: 0.000431 loss: 10.0
[11/21 13:33:43] ppdet.engine INFO: Eval iter: 0
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.410
 Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.702
"""


def test_curve_points_and_final_line(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text(LOG)
    out = tmp_path / 'curve.json'
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'demo_curve.py'), '--log', str(log),
                          '--out', str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    import json
    curve = json.loads(out.read_text())
    assert curve['evaluations'] == [
        {'epoch': 1, 'iteration': 43, 'wall_s': 107, 'ap': 0.12, 'ap50': 0.301},
        {'epoch': 2, 'iteration': 86, 'wall_s': 240, 'ap': 0.41, 'ap50': 0.702}]
    assert res.stdout.strip().splitlines()[-1] == \
        'final COCO AP 0.410  AP50 0.702  after 86 iterations, 240 s of training'


def test_log_without_evaluation_fails(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text(LOG.splitlines()[0] + '\n')
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'demo_curve.py'), '--log', str(log)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and f'no COCO evaluation found in {log}' in res.stderr
