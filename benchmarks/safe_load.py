"""Time and memory of reading an R50vd checkpoint: ``safe_load.load`` against ``paddle.load``.

    OMP_NUM_THREADS=1 python benchmarks/safe_load.py [--config configs/rtdetr/rtdetr_r50vd_6x_coco.yml]
        [--repeats 5] [--out benchmarks/safe_load.json]

Writes the config's model state dict (random initialisation) with ``paddle.save`` at protocol 4 (what ppdet's
checkpoints use) and 2 (older files; bytes go through ``_codecs.encode`` there), and an AdamW optimizer state
of the same model (two moments per weight, as ``.pdopt``). Each load runs in a fresh process, the loaders
alternating, after the file was read once (page cache warm): ``seconds`` is the wall time of the load call,
``cpu_seconds`` its CPU time (less disturbed by other jobs on a shared machine than the wall time),
``peak_mb`` the process's peak RSS during the call (``VmHWM``, reset before it) over its RSS before it. A numpy GEMM
probe before and after shows how loaded the shared machine was; compare the two loaders within one run.
Prints the results as JSON and writes them to ``--out``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r'''
import sys, time
import paddle
from ppdet_rtdetr.engine import safe_load

def status_mb(field):
    with open('/proc/self/status') as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024

load = {'paddle.load': paddle.load, 'safe_load.load': safe_load.load}[sys.argv[1]]
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets the peak (VmHWM) to the current RSS: the imports' peak does not count
before = status_mb('VmRSS')
start, cpu_start = time.perf_counter(), time.process_time()
state = load(sys.argv[2])
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
print('RESULT', seconds, cpu_seconds, status_mb('VmHWM') - before, len(state))
'''


def gemm_gflops(n=1024, runs=3):
    """numpy float32 n^3 GEMM rate: how busy the shared machine is right now."""
    a = np.random.rand(n, n).astype('float32')
    best = float('inf')
    for _ in range(runs):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return round(2 * n ** 3 / best / 1e9, 1)


def write_files(config, folder):
    """{name: path} of the checkpoint files to read."""
    import paddle
    from ppdet.core.workspace import create

    import ppdet_rtdetr
    cfg = ppdet_rtdetr.load_config(config)
    model = create(cfg.architecture)
    files = {}
    for protocol in (4, 2):
        files['model_protocol{}.pdparams'.format(protocol)] = os.path.join(folder, 'p{}.pdparams'.format(protocol))
        paddle.save(model.state_dict(), files['model_protocol{}.pdparams'.format(protocol)], protocol=protocol)
    optimizer = paddle.optimizer.AdamW(parameters=model.parameters())
    for p in model.parameters():  # moments for every weight without running the model
        p.grad = paddle.zeros_like(p) if p.grad is None else p.grad
    optimizer.step()
    state = dict(optimizer.state_dict(), last_epoch=1)
    files['adamw.pdopt'] = os.path.join(folder, 'adamw.pdopt')
    paddle.save(state, files['adamw.pdopt'])
    return files


def measure(loader, path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run([sys.executable, '-c', _CHILD, loader, path], check=True, capture_output=True,
                         text=True, env=env, timeout=600).stdout
    line = [line for line in out.splitlines() if line.startswith('RESULT ')][-1]
    _, seconds, cpu_seconds, peak, entries = line.split()
    return float(seconds), float(cpu_seconds), float(peak), int(entries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'rtdetr', 'rtdetr_r50vd_6x_coco.yml'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'safe_load.json'),
                        help='write the JSON here too')
    args = parser.parse_args(argv)
    result = {'config': os.path.relpath(args.config, ROOT), 'repeats': args.repeats,
              'gemm_gflops_before': gemm_gflops()}
    with tempfile.TemporaryDirectory() as folder:
        for name, path in write_files(args.config, folder).items():
            with open(path, 'rb') as f:
                while f.read(1 << 24):  # page cache warm for both loaders
                    pass
            runs = {'paddle.load': [], 'safe_load.load': []}
            for i in range(args.repeats):
                order = list(runs) if i % 2 == 0 else list(runs)[::-1]
                for loader in order:
                    runs[loader].append(measure(loader, path))
            entries = {run[3] for rs in runs.values() for run in rs}
            assert len(entries) == 1, 'the loaders returned different numbers of entries: {}'.format(entries)
            summary = {loader: {'seconds_median': round(statistics.median(r[0] for r in rs), 3),
                                'seconds_min': round(min(r[0] for r in rs), 3),
                                'cpu_seconds_median': round(statistics.median(r[1] for r in rs), 3),
                                'cpu_seconds_min': round(min(r[1] for r in rs), 3),
                                'peak_mb_median': round(statistics.median(r[2] for r in rs), 1)}
                       for loader, rs in runs.items()}
            summary['file_mb'] = round(os.path.getsize(path) / 2 ** 20, 1)
            summary['entries'] = entries.pop()
            for key in ('seconds_median', 'seconds_min', 'cpu_seconds_min'):
                summary['ratio_safe_over_paddle_' + key] = round(summary['safe_load.load'][key]
                                                                 / summary['paddle.load'][key], 3)
            result[name] = summary
    result['gemm_gflops_after'] = gemm_gflops()
    text = json.dumps(result, indent=2)
    print(text)
    with open(args.out, 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
