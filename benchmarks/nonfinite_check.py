"""Cost of the non-finite prediction check (``LossGuard`` on the transformer's outputs) per training step.

    OMP_NUM_THREADS=1 python benchmarks/nonfinite_check.py [--steps 20] [--out benchmarks/nonfinite_check.json]

For the tiny test config (64x96) and R18vd at 320x320 (batch 2, 7 and 19 gts, random weights), each in its own
process: steps as ppdet's Trainer takes them (forward with the loss dict, ``backward``, AdamW step,
``clear_grad``; oneDNN convolution gradients as ``RTDETRTrainer`` uses on CPU), alternately with and without the
guard installed. Reported: the median time of the check itself (``prediction_check.all_finite`` on the
transformer's outputs, as the guard calls it), the median step time with the guard and without it (the
difference also holds the loss check, one sync, and the machine's noise), and the check's share of a step. On
a GPU the check's device sync costs no extra wait: the matcher copies its cost matrix to the host right after.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {'tiny_64x96': ('configs/tests/rtdetr_tiny.yml', (64, 96)),
         'r18vd_320': ('configs/rtdetr/rtdetr_r18vd_6x_coco.yml', (320, 320))}


def _inputs(height, width, num_classes):
    import paddle
    rng = np.random.RandomState(0)
    gt_bbox, gt_class = [], []
    for n in (7, 19):
        boxes = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], 1)
        gt_bbox.append(paddle.assign(boxes.astype('float32')))
        gt_class.append(paddle.assign(rng.randint(0, num_classes, (n, 1)).astype('int32')))
    return {'image': paddle.assign(rng.rand(2, 3, height, width).astype('float32')),
            'im_shape': paddle.full([2, 2], float(height), 'float32'), 'scale_factor': paddle.ones([2, 2], 'float32'),
            'gt_bbox': gt_bbox, 'gt_class': gt_class}


def worker(case, steps):
    """Times `steps` pairs of steps (guarded, plain) of one case in this process; returns the result dict."""
    sys.path.insert(0, ROOT)
    import paddle
    import ppdet_rtdetr
    from ppdet.core.workspace import create, merge_config
    from ppdet_rtdetr.engine import conv_grad, prediction_check
    from ppdet_rtdetr.engine.loss_guard import LossGuard

    paddle.set_device('cpu')
    paddle.seed(0)
    path, (height, width) = CASES[case]
    cfg = ppdet_rtdetr.load_config(os.path.join(ROOT, path))
    merge_config({'norm_type': 'bn', 'pretrain_weights': ''})
    model = create(cfg.architecture)
    model.train()
    conv_grad.use_onednn_conv_grads(model)
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-5, parameters=model.parameters(), weight_decay=1e-4,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(0.1))
    inputs = _inputs(height, width, cfg.num_classes)
    check_s, all_finite = [], prediction_check.all_finite

    def timed_check(outputs):  # what the guard's prediction hook calls (loss_guard reads it from the module)
        start = time.perf_counter()
        finite = all_finite(outputs)
        check_s.append(time.perf_counter() - start)
        return finite

    prediction_check.all_finite = timed_check
    status = {'epoch_id': 0, 'step_id': 0, 'steps_per_epoch': 1}
    step_s = {'guarded': [], 'plain': []}
    for i in range(2 * steps + 2):
        kind = 'guarded' if i % 2 == 0 else 'plain'
        guard = LossGuard(types.SimpleNamespace(model=model, status=status)) if kind == 'guarded' else None
        start = time.perf_counter()
        loss = model(inputs)['loss']
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        if i >= 2:  # one warm-up step of each kind
            step_s[kind].append(time.perf_counter() - start)
        if guard:
            guard.remove()
    prediction_check.all_finite = all_finite
    check_ms = 1e3 * float(np.median(check_s[1:]))
    step_ms = {k: 1e3 * float(np.median(v)) for k, v in step_s.items()}
    return {'case': case, 'steps': steps, 'check_ms': round(check_ms, 3),
            'step_ms': {k: round(v, 1) for k, v in step_ms.items()},
            'check_share_of_step_pct': round(100 * check_ms / step_ms['plain'], 3),
            'step_difference_pct': round(100 * (step_ms['guarded'] / step_ms['plain'] - 1), 2),
            'omp_num_threads': os.environ.get('OMP_NUM_THREADS')}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type=int, default=20, help='timed steps of each kind (after 1 warm-up each)')
    parser.add_argument('--out', default=None)
    parser.add_argument('--worker', default=None, choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    results = []
    for case in CASES:  # a process per case: ppdet merges every loaded config into one global dict
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', case, '--steps',
                               str(args.steps)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit('{} failed:\n{}'.format(case, proc.stderr[-3000:]))
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
