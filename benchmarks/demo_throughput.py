"""Training throughput of the demo model against its levers: input size, backbone width, batch size, queries.

    python benchmarks/demo_throughput.py [--steps 6] [--out benchmarks/demo_throughput.json] [--note "..."]

Each setting is the demo config (configs/demo/rtdetr_r18vd_shapes.yml) with one `-o` change. It runs in a fresh
process with the demo's thread count (OMP_NUM_THREADS, default all cores): one warm-up step, then `--steps`
timed training steps as the Trainer runs them (forward with the loss, backward, AdamW with the config's
gradient clip, clear), on random images with 1-4 random boxes each (fixed seed). A float32 GEMM is measured
before and after each process (the VM drifts: compare settings within one run). Reported per setting: the
median step time, images/s and steps/min; data loading and evaluation are not included (the demo's
`worker_num: 2` reader overlaps with the step).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo', 'rtdetr_r18vd_shapes.yml')
# name -> `-o` overrides of the demo config
SETTINGS = {
    'demo': {},
    'size_128': {'size': 128},
    'size_192': {'size': 192},
    'size_224': {'size': 224},
    'width_1.0': {'RTDETRResNet': {'width_mult': 1.0, 'ch_in': 64}},
    'batch_4': {'batch': 4},
    'batch_16': {'batch': 16},
    'queries_50': {'RTDETRDeformableTransformer': {'num_queries': 50}},
    'denoising_100': {'RTDETRDeformableTransformer': {'num_denoising': 100}},
}


def _batch(rng, batch, size):
    import paddle
    gt_bbox, gt_class = [], []
    for _ in range(batch):
        n = rng.randint(1, 5)
        cxcy, wh = rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.1, 0.3, (n, 2))
        gt_bbox.append(paddle.to_tensor(np.concatenate([cxcy, wh], 1).astype('float32')))
        gt_class.append(paddle.to_tensor(rng.randint(0, 4, (n, 1)).astype('int32')))
    return {'image': paddle.to_tensor(rng.rand(batch, 3, size, size).astype('float32')),
            'im_shape': paddle.full([batch, 2], float(size)), 'scale_factor': paddle.ones([batch, 2]),
            'gt_bbox': gt_bbox, 'gt_class': gt_class}


def worker(name, steps):
    """Times one setting in this process; prints one JSON line."""
    sys.path.insert(0, ROOT)
    import paddle
    from ppdet.core.workspace import create
    from harness.probe import gemm_gflops
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.config import load_config
    gemm_before = gemm_gflops()
    cfg = load_config(DEMO)
    setting = dict(SETTINGS[name])
    size = setting.pop('size', cfg.eval_size[0])
    batch = setting.pop('batch', cfg.TrainReader['batch_size'])
    apply_overrides(setting)
    paddle.seed(0)
    model = create(cfg.architecture)
    model.train()
    clip = cfg.OptimizerBuilder['clip_grad_by_norm']
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters(), weight_decay=1e-4,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(clip))
    rng = np.random.RandomState(0)
    times = []
    for _ in range(steps + 1):
        inputs = _batch(rng, batch, size)
        start = time.perf_counter()
        model(inputs)['loss'].backward()
        opt.step()
        opt.clear_grad()
        times.append(time.perf_counter() - start)
    step = float(np.median(times[1:]))
    print(json.dumps({'setting': name, 'size': size, 'batch': batch, 'step_s': round(step, 4),
                      'images_per_s': round(batch / step, 2), 'steps_per_min': round(60 / step, 1),
                      'gemm_gflops': [round(gemm_before, 1), round(gemm_gflops(), 1)]}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--out', default=None)
    parser.add_argument('--note', default='')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps)
    sys.path.insert(0, ROOT)
    from harness.harness import emit_report
    from harness.probe import machine
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', str(os.cpu_count())))
    results = []
    for name in args.settings:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', name, '--steps',
                               str(args.steps)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f'{name} failed:\n{proc.stderr[-3000:]}')
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[[r['setting'] for r in results].index('demo')] if 'demo' in args.settings else None
    for r in results:
        if base:
            r['images_per_s_vs_demo'] = round(r['images_per_s'] / base['images_per_s'], 3)
    emit_report({'config': os.path.relpath(DEMO, ROOT), 'threads': env['OMP_NUM_THREADS'], 'steps': args.steps,
                 'machine': machine(), 'note': args.note, 'settings': results},
                args.out)


if __name__ == '__main__':
    main()
