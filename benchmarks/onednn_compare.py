"""Paddle Inference + oneDNN and onnxruntime on two checkouts of this repository, interleaved, in one JSON.

    python benchmarks/onednn_compare.py --base /path/to/other/checkout [--rounds 2] [--config ...]
        [--out benchmarks/onednn_r18vd_640.json] [--note "..."]

Each round runs ``tools/benchmark.py`` (engines paddle_mkldnn and onnxruntime, batch 1, 640x640, 2 threads,
random weights seed 0, --profile) of the base checkout, then of this one, alternating who goes first; every run
brackets each engine with the numpy GEMM probe, so ``fraction_of_gemm`` is comparable across the runs of one
round even when the shared VM's speed drifts. What a graph change did is the per-round ratio of the two
``fraction_of_gemm`` figures (this / base), and the op shares show where the time went.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(checkout, args):
    """tools/benchmark.py of `checkout` (its own package first on the path); returns its JSON."""
    out = os.path.join(tempfile.mkdtemp(), 'bench.json')
    cmd = [sys.executable, os.path.join(checkout, 'tools', 'benchmark.py'), '-c', os.path.join(checkout, args.config),
           '--image_shape', '3', str(args.size), str(args.size), '--cpu_threads', '2', '--engines', 'paddle_mkldnn',
           'onnxruntime', '--warmup', str(args.warmup), '--runs', str(args.runs), '--profile', '--output', out]
    env = dict(os.environ, PYTHONPATH=checkout)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f'{checkout}: tools/benchmark.py failed:\n{proc.stderr[-3000:]}')
    with open(out) as f:
        report = json.load(f)
    return {r['engine']: {k: r[k] for k in ('latency_ms', 'gemm_gflops_before', 'gemm_gflops_after',
                                             'fraction_of_gemm', 'op_share') if k in r}
            for r in report['results']}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--base', required=True, help='the other checkout (e.g. the main branch)')
    parser.add_argument('--config', default='configs/rtdetr/rtdetr_r18vd_6x_coco.yml')
    parser.add_argument('--size', type=int, default=640)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=8)
    parser.add_argument('--out', default=None)
    parser.add_argument('--note', default='')
    args = parser.parse_args(argv)
    checkouts = {'base': os.path.abspath(args.base), 'this': ROOT}
    rounds = []
    for r in range(args.rounds):
        order = ['base', 'this'] if r % 2 == 0 else ['this', 'base']
        result = {name: run_tool(checkouts[name], args) for name in order}
        result['this_over_base_fraction_of_gemm'] = {
            e: round(result['this'][e]['fraction_of_gemm'] / result['base'][e]['fraction_of_gemm'], 3)
            for e in result['this']}
        rounds.append(result)
        print(json.dumps({'round': r, **result['this_over_base_fraction_of_gemm']}), file=sys.stderr)
    summary = {}
    for e in rounds[0]['this']:
        for name in ('base', 'this'):
            fractions = [rd[name][e]['fraction_of_gemm'] for rd in rounds]
            summary[f'{e} {name} fraction_of_gemm'] = {'median': float(np.median(fractions)),
                                                       'min': min(fractions), 'max': max(fractions)}
    report = {'config': args.config, 'size': args.size, 'batch': 1, 'cpu_threads': 2, 'checkouts': checkouts,
              'load_avg': list(os.getloadavg()), 'note': args.note, 'summary': summary, 'rounds': rounds}
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
