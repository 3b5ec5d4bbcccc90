"""Fixed-size vs dynamic-size export: CPU latency at one size, Paddle Inference + oneDNN and onnxruntime.

    python benchmarks/export_dynamic.py [--configs configs/rtdetr/rtdetr_r18vd_6x_coco.yml ...] [--size 640 640]
        [--rounds 3] [--warmup 2] [--runs 10] [--cpu_threads 2] [--interleave N]
        [--output benchmarks/export_dynamic_640.json]

Each config (random weights, seed 0) is exported twice by tools/export_model.py, `--image_shape 3 H W` (anchors
and position embeddings baked) and `--image_shape 3 -1 -1` (computed from the input by the graph), both with
--onnx. The timing is harness.worker, as in tools/benchmark.py (one process per measurement:
warm-up, `runs` timed runs of the model on batch 1 at H x W, a numpy float32 GEMM right before and after as this machine's reference speed).
On a shared machine the speed drifts between measurements, so fixed and dynamic alternate (the order flips
every round) and each round's ratio dynamic / fixed is taken between neighbours; the JSON keeps every
measurement, and per engine the median and range of the ratios.

Separate processes also differ by themselves (memory placement, the machine's drift between them), so
`--interleave N` adds a second measurement per engine: both variants loaded in this one process and run in
alternation, N pairs (the order flips every pair), between two GEMM probes; the ratio is taken per pair.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from harness.harness import emit_report, run_worker
from harness.probe import gemm_gflops, worker_env
from harness.runners import engine_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ['configs/rtdetr/rtdetr_r18vd_6x_coco.yml', 'configs/rtdetr/rtdetr_r50vd_6x_coco.yml']
ENGINES = ('paddle_mkldnn', 'onnxruntime')
VARIANTS = ('fixed', 'dynamic')


def _env(threads):
    return worker_env(threads, ROOT)


def export(config, size, out_dir, threads):
    """{variant: exported folder}: random weights (seed 0) saved once, exported fixed and dynamic with ONNX."""
    weights = os.path.join(out_dir, 'weights.pdparams')
    code = ('import sys, paddle, ppdet_rtdetr; from ppdet.core.workspace import create, load_config; '
            'paddle.seed(0); paddle.save(create(load_config(sys.argv[1]).architecture).state_dict(), sys.argv[2])')
    subprocess.run([sys.executable, '-c', code, config, weights], check=True, env=_env(threads),
                   capture_output=True)
    dirs = {}
    for variant, hw in zip(VARIANTS, (size, [-1, -1])):
        parent = os.path.join(out_dir, variant)
        subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-c', config,
                        '-o', f'weights={weights}', '--output_dir', parent, '--onnx', '--image_shape', '3',
                        *map(str, hw)], check=True, env=_env(threads), capture_output=True)
        dirs[variant] = os.path.join(parent, os.path.splitext(os.path.basename(config))[0])
    return dirs


def measure(engine, model_dir, config, size, args):
    """One benchmark worker run (harness.worker): {'gemm_gflops_before', 'latency_ms',
    'gemm_gflops_after'}."""
    return run_worker(engine, model_dir, (3, *size), 1, args.cpu_threads, warmup=args.warmup, runs=args.runs)


def interleaved(engine, dirs, size, threads, pairs, warmup):
    """Both variants in this process, run in alternation: per-variant median latency and the per-pair ratios
    dynamic / fixed (median, 10th and 90th percentile), with the GEMM rate before and after."""
    h, w = size
    inputs = {'image': np.random.RandomState(0).rand(1, 3, h, w).astype('float32'),
              'im_shape': np.array([[h, w]], 'float32'), 'scale_factor': np.ones([1, 2], 'float32')}
    gemm_before = gemm_gflops()
    runs = {v: engine_runner(engine, dirs[v], inputs, threads) for v in VARIANTS}
    for v in VARIANTS:
        for _ in range(warmup):
            runs[v]()
    times = {v: [] for v in VARIANTS}
    for i in range(pairs):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            start = time.perf_counter()
            runs[v]()
            times[v].append(time.perf_counter() - start)
    ratios = np.array(times['dynamic']) / np.array(times['fixed'])
    return {'pairs': pairs,
            **{f'{v}_median_ms': round(1e3 * float(np.median(times[v])), 1) for v in VARIANTS},
            'pair_ratio_median': round(float(np.median(ratios)), 3),
            'pair_ratio_p10_p90': [round(float(q), 3) for q in np.percentile(ratios, [10, 90])],
            'gemm_gflops_before_after': [round(gemm_before, 1), round(gemm_gflops(), 1)]}


def summarize(rounds):
    """Per variant the median latency over rounds; the per-round ratios dynamic / fixed (latency, and latency
    per GEMM-speed unit: each measurement's ms times the mean of its own two GEMM figures)."""
    out = {}
    for variant in VARIANTS:
        out[f'{variant}_median_ms'] = round(float(np.median([r[variant]['latency_ms']['median'] for r in rounds])), 1)
    ratios, ratios_gemm = [], []
    for r in rounds:
        ms = {v: r[v]['latency_ms']['median'] for v in VARIANTS}
        gemm = {v: (r[v]['gemm_gflops_before'] + r[v]['gemm_gflops_after']) / 2 for v in VARIANTS}
        ratios.append(ms['dynamic'] / ms['fixed'])
        ratios_gemm.append(ms['dynamic'] * gemm['dynamic'] / (ms['fixed'] * gemm['fixed']))
    for key, values in (('ratio_dynamic_over_fixed', ratios), ('ratio_gemm_normalised', ratios_gemm)):
        out[key] = {'median': round(float(np.median(values)), 3), 'min': round(min(values), 3),
                    'max': round(max(values), 3), 'per_round': [round(v, 3) for v in values]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=CONFIGS)
    parser.add_argument('--size', nargs=2, type=int, default=[640, 640], metavar=('H', 'W'))
    parser.add_argument('--engines', nargs='+', default=list(ENGINES), choices=ENGINES)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--output', default=None)
    parser.add_argument('--interleave', type=int, default=0, metavar='N',
                        help='also time both variants in one process, N pairs in alternation (0: off)')
    parser.add_argument('--note', action='append', default=[])
    args = parser.parse_args(argv)
    report = {'tool': 'benchmarks/export_dynamic.py', 'date': time.strftime('%Y-%m-%d %H:%M'),
              'settings': {'size_hw': args.size, 'batch_size': 1, 'cpu_threads': args.cpu_threads,
                           'warmup': args.warmup, 'runs': args.runs, 'rounds': args.rounds,
                           'interleave': args.interleave,
                           'weights': 'random (seed 0)'},
              'load_avg_1min_before': os.getloadavg()[0], 'models': {}}
    for config in args.configs:
        with tempfile.TemporaryDirectory() as work_dir:
            dirs = export(os.path.join(ROOT, config), args.size, work_dir, args.cpu_threads)
            model = {}
            for engine in args.engines:
                rounds = []
                for i in range(args.rounds):
                    order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                    rounds.append({v: measure(engine, dirs[v], config, args.size, args) for v in order})
                    print(f'{os.path.basename(config)} {engine} round {i}: ' + ', '.join(
                        f"{v} {rounds[-1][v]['latency_ms']['median']:.0f} ms" for v in VARIANTS), file=sys.stderr)
                model[engine] = dict(summarize(rounds), rounds=rounds) if rounds else {}
                if args.interleave:
                    model[engine]['interleaved'] = interleaved(engine, dirs, args.size, args.cpu_threads,
                                                               args.interleave, args.warmup)
                    print(f'{os.path.basename(config)} {engine} interleaved: {model[engine]["interleaved"]}',
                          file=sys.stderr)
            report['models'][config] = model
    report['load_avg_1min_after'] = os.getloadavg()[0]
    report['notes'] = args.note
    emit_report(report, args.output)
    return report


if __name__ == '__main__':
    main()
