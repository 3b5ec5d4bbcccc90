"""Training-step time of RT-DETR R18vd (batch 2, 640x640, denoising 100) next to the official PaddleDetection.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py [--official_repo DIR] [--rounds 3] [--steps 4]
        [--cpu_threads 2] [--cpu_conv_grad onednn|paddle] [--out benchmarks/train_step.json] [--note "..."]

A step is what ppdet's Trainer does per batch: forward with the loss dict, ``loss.backward()``, AdamW step with
grad-norm clip 0.1, ``clear_grad()``. Both models get the same random weights (ours, seed 0; the parameter
names are the official ones), the same two images and the same ground truths (7 and 19 boxes). Each round
runs ours, then the official one, each in a fresh process (one warm-up step, then ``--steps`` timed steps,
median); a numpy float32 2048^3 GEMM is measured before and after every process as the machine-speed probe
(the VM is shared: compare only within one round). ``ratio`` = ours / official per round in wall time,
``cpu_ratio`` in process CPU time: with ``--cpu_threads 1`` the CPU time is the work done, the steadier figure
while other jobs load the VM (wall time then mostly measures how much of a core the process was given).

``--official_repo`` is a PaddleDetection checkout (develop; the one with ppdet/modeling/transformers/
rtdetr_transformer.py), imported by the official worker only (benchmarks/official.py: its ``ppdet`` replaces
paddledet 2.6.0 there, ``imgaug`` stubbed, ``norm_type: bn`` instead of sync_bn). Without ``--official_repo``
only our step is timed.

Our model computes its convolution gradients as RTDETRTrainer does in CPU training: on oneDNN
(``ppdet_rtdetr/engine/conv_grad.py``), or with ``--cpu_conv_grad paddle`` on Paddle's kernels, as the
official model does. Our worker also records the host-side share of a step: the time spent in the matcher,
in building the denoising group and in the criterion (forward only, wall time, including the ops they launch).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_CFG = os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r18vd_6x_coco.yml')
OFFICIAL_CFG = os.path.join('configs', 'rtdetr', 'rtdetr_r18vd_6x_coco.yml')
NUM_GTS = (7, 19)


def gemm_gflops(n=2048, repeats=5):
    """float32 n x n x n GEMM speed of numpy (median of `repeats` after one warm-up), in GFLOP/s."""
    a = np.random.RandomState(0).rand(n, n).astype('float32')
    b = np.random.RandomState(1).rand(n, n).astype('float32')
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def make_batch(size):
    """The fixed batch: 2 random images [2, 3, size, size] and gts (normalised cxcywh, classes 0..79)."""
    rng = np.random.RandomState(0)
    image = rng.rand(2, 3, size, size).astype('float32')
    gt_bbox, gt_class = [], []
    for n in NUM_GTS:
        cxcy = rng.uniform(0.2, 0.8, (n, 2))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        gt_bbox.append(np.concatenate([cxcy, wh], 1).astype('float32'))
        gt_class.append(rng.randint(0, 80, (n, 1)).astype('int32'))
    return image, gt_bbox, gt_class


def _inputs(size):
    import paddle
    image, gt_bbox, gt_class = make_batch(size)
    return {'image': paddle.assign(image),
            'im_shape': paddle.full([2, 2], float(size), 'float32'),
            'scale_factor': paddle.ones([2, 2], 'float32'),
            'gt_bbox': [paddle.assign(b) for b in gt_bbox],
            'gt_class': [paddle.assign(c) for c in gt_class]}


def _build(kind, official_repo):
    """The R18vd model in train mode, from our config or the official one."""
    if kind == 'official':
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from official import import_official
        workspace = import_official(official_repo)
        cfg = workspace.load_config(os.path.join(official_repo, OFFICIAL_CFG))
        workspace.merge_config({'norm_type': 'bn', 'pretrain_weights': ''})
        return workspace.create(cfg.architecture)
    sys.path.insert(0, ROOT)
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create, load_config, merge_config
    cfg = load_config(OUR_CFG)
    merge_config({'norm_type': 'bn', 'pretrain_weights': ''})
    return create(cfg.architecture)


class _HostTimer(object):
    """Wall time spent inside wrapped callables (forward only), summed per name."""

    def __init__(self):
        self.totals = {}

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] = self.totals.get(name, 0.) + time.perf_counter() - start
        return timed


def _install_host_timers(model):
    from ppdet_rtdetr.modeling import transformer
    timer = _HostTimer()
    loss = model.detr_head.loss
    loss.matcher = timer.wrap('matcher', loss.matcher)
    transformer.get_contrastive_denoising_training_group = timer.wrap(
        'denoising', transformer.get_contrastive_denoising_training_group)
    model.detr_head.loss = timer.wrap('criterion', loss)
    return timer


def worker(args):
    """Times `args.steps` steps of one model in this process; prints one JSON line."""
    import paddle
    paddle.set_device('cpu')
    paddle.seed(0)
    np.random.seed(0)
    gemm_before = gemm_gflops()
    model = _build(args.worker, args.official_repo)
    state = paddle.load(args.weights)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise SystemExit(f'{args.worker}: parameter names differ from ours: {sorted(missing)[:5]}')
    model.set_state_dict(state)
    model.train()
    if args.worker == 'ours' and args.cpu_conv_grad == 'onednn':
        from ppdet_rtdetr.native.conv_grad import use_onednn_conv_grads
        use_onednn_conv_grads(model)
    timer = _install_host_timers(model) if args.worker == 'ours' else None
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(), weight_decay=1e-4,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(0.1))
    inputs = _inputs(args.size)
    times, cpu_times, losses = [], [], []
    for i in range(args.steps + 1):
        if timer and i == 1:
            timer.totals.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = model(inputs)
        out['loss'].backward()
        opt.step()
        opt.clear_grad()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
        losses.append(float(out['loss']))
    result = {'kind': args.worker, 'step_s': times[1:], 'median_s': float(np.median(times[1:])),
              'cpu_s': cpu_times[1:], 'median_cpu_s': float(np.median(cpu_times[1:])),
              'first_step_s': times[0], 'loss': losses, 'gemm_gflops': [gemm_before, gemm_gflops()]}
    if timer:
        result['host_s_per_step'] = {k: v / args.steps for k, v in timer.totals.items()}
    print(json.dumps(result))


def _run_worker(kind, args, weights):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.cpu_threads))
    env.pop('PYTHONPATH', None) if kind == 'official' else None
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, '--weights', weights,
           '--steps', str(args.steps), '--size', str(args.size), '--cpu_threads', str(args.cpu_threads),
           '--cpu_conv_grad', args.cpu_conv_grad]
    if args.official_repo:
        cmd += ['--official_repo', args.official_repo]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f'{kind} worker failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _save_weights(path):
    """Our R18vd's random initial weights (seed 0), the weights both workers load."""
    import paddle
    paddle.seed(0)
    model = _build('ours', None)
    paddle.save(model.state_dict(), path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official_repo', default=None, help='PaddleDetection checkout (develop)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=4, help='timed steps per process (after 1 warm-up)')
    parser.add_argument('--size', type=int, default=640)
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--cpu_conv_grad', default='onednn', choices=['onednn', 'paddle'],
                        help="our model's convolution gradients (RTDETRTrainer's cpu_conv_grad)")
    parser.add_argument('--out', default=None)
    parser.add_argument('--note', default='')
    parser.add_argument('--worker', default=None, choices=['ours', 'official'], help=argparse.SUPPRESS)
    parser.add_argument('--weights', default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.official_repo:
        args.official_repo = os.path.abspath(args.official_repo)
    kinds = ['ours', 'official'] if args.official_repo else ['ours']
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, 'r18vd_seed0.pdparams')
        _save_weights(weights)
        rounds = []
        for r in range(args.rounds):
            # alternate who goes first, so a slow period of the shared VM hits both sides alike
            order = kinds if r % 2 == 0 else kinds[::-1]
            results = {k: _run_worker(k, args, weights) for k in order}
            if args.official_repo:
                results['ratio'] = results['ours']['median_s'] / results['official']['median_s']
                results['cpu_ratio'] = results['ours']['median_cpu_s'] / results['official']['median_cpu_s']
            rounds.append(results)
            # [wall s, cpu s] per worker, and the ratios
            brief = {k: v if 'ratio' in k else [v['median_s'], v['median_cpu_s']] for k, v in results.items()}
            print(json.dumps({'round': r, **brief}), file=sys.stderr)
    report = {'config': 'rtdetr_r18vd_6x_coco (norm bn)', 'batch': 2, 'size': args.size,
              'num_gts': list(NUM_GTS), 'num_denoising': 100, 'cpu_threads': args.cpu_threads,
              'cpu_conv_grad': args.cpu_conv_grad,
              'steps_per_process': args.steps, 'load_avg': list(os.getloadavg()), 'note': args.note,
              'rounds': rounds}
    if args.official_repo:
        for key in ('ratio', 'cpu_ratio'):
            ratios = [r[key] for r in rounds]
            report[key] = {'median': float(np.median(ratios)), 'min': min(ratios), 'max': max(ratios)}
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text)
    return report


if __name__ == '__main__':
    main()
