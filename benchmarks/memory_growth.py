"""Host memory over a long training run: does RSS grow per step (RT-DETR#449, #207)?

    OMP_NUM_THREADS=1 python benchmarks/memory_growth.py [--iters 300] [--every 25]
        [--config configs/tests/rtdetr_tiny.yml] [--out benchmarks/memory_growth.json]

Trains the config in this process with ppdet's Trainer (our hooks installed, checkpoints every
``--snapshot_epoch`` epochs) on the synthetic shapes data (written to a temporary folder), and records after
the model is built, after the first step, every ``--every`` steps and at the end (Linux, glibc):

* ``rss_mb``: the resident set size as the user sees it (``/proc/self/statm``). It jumps by the size of a
  checkpoint while one is written and falls back later, when glibc reuses or returns the freed blocks;
* ``rss_trimmed_mb``: the same after ``gc.collect()`` and glibc's ``malloc_trim(0)``, which hand free heap
  memory back: the memory still in use, the number a leak would raise;
* ``python_objects``: gc-tracked Python objects (a leak of Python references shows here first).

The summary: ``warmup_mb`` is the trimmed growth over the first ``--warmup`` share of the run (caches,
allocator pools and lazily created kernels filling up), ``steady_kb_per_iter`` / ``objects_per_iter`` the
least-squares slopes of trimmed RSS / objects over the rest: ~0 means no per-step growth (a leak of one
64x96 input batch per step would be ~70 KB / iteration).

Finding (Paddle 3.3.1): every ``paddle.to_tensor`` call leaks one Python list (~120 bytes). Our matcher,
criterion and anchors called it 16 times per step (~1.9 KB / iteration, about 1 GB over a 72-epoch COCO
schedule); they now use ``paddle.assign`` / ``paddle.full``, which do not leak.
"""
import argparse
import ctypes
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb():
    """Resident set size of this process in MiB (Linux)."""
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2 ** 20


def trimmed_rss_mb():
    """RSS after freeing unreachable Python objects and returning free heap pages to the OS (glibc)."""
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    return rss_mb()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml'))
    parser.add_argument('--iters', type=int, default=300, help='at least this many training iterations')
    parser.add_argument('--every', type=int, default=25, help='record every N iterations')
    parser.add_argument('--warmup', type=float, default=0.25, help='share of the run counted as warm-up')
    parser.add_argument('--num_train', type=int, default=32, help='synthetic train images')
    parser.add_argument('--snapshot_epoch', type=int, default=5, help='checkpoint every N epochs')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'memory_growth.json'))
    return parser.parse_args(argv)


def slope(points, key):
    """Least-squares slope of points[key] over points['iteration'] (per iteration)."""
    x = np.array([p['iteration'] for p in points], float)
    y = np.array([p[key] for p in points], float)
    return float(np.polyfit(x, y, 1)[0]) if len(points) > 1 else 0.


def summarize(points, warmup_share):
    """The JSON summary fields (see the module docstring) from the recorded points."""
    first = next(p for p in points if p['iteration'] >= 1)
    end_warmup = first['iteration'] + warmup_share * (points[-1]['iteration'] - first['iteration'])
    steady = [p for p in points if p['iteration'] >= end_warmup]
    return {
        'rss_after_build_mb': points[0]['rss_mb'],
        'rss_after_first_step_mb': first['rss_mb'],
        'rss_end_mb': points[-1]['rss_mb'],
        'rss_max_mb': max(p['rss_mb'] for p in points),
        'warmup_iterations': int(steady[0]['iteration']),
        'warmup_mb': round(steady[0]['rss_trimmed_mb'] - first['rss_trimmed_mb'], 1),
        'steady_mb': round(steady[-1]['rss_trimmed_mb'] - steady[0]['rss_trimmed_mb'], 1),
        'steady_kb_per_iter': round(slope(steady, 'rss_trimmed_mb') * 1024, 2),
        'objects_per_iter': round(slope(steady, 'python_objects'), 3),
    }


def main(argv=None):
    args = parse_args(argv)
    import paddle

    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import load_config
    from ppdet.engine.callbacks import Callback

    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.device import resolve_device
    from ppdet_rtdetr.data import synthetic
    from ppdet_rtdetr.engine import RTDETRTrainer

    points = []

    def record(iteration):
        rss = rss_mb()
        points.append({'iteration': iteration, 'rss_mb': round(rss, 1), 'rss_trimmed_mb': round(trimmed_rss_mb(), 1),
                       'python_objects': len(gc.get_objects()), 'wall_s': round(time.time() - start, 1)})
        print(json.dumps(points[-1]), flush=True)

    class Recorder(Callback):
        def on_step_end(self, status):
            iteration = status['epoch_id'] * status['steps_per_epoch'] + status['step_id'] + 1
            if iteration == 1 or iteration % args.every == 0:
                record(iteration)

    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, 'shapes')
        synthetic.make_dataset(data, num_train=args.num_train, num_val=1, size=96, seed=0)
        cfg = load_config(args.config)
        apply_overrides({'save_dir': os.path.join(work, 'output'), 'snapshot_epoch': args.snapshot_epoch,
                         'log_iter': args.every,
                         'TrainDataset': {'dataset_dir': data, 'image_dir': 'images/train',
                                          'anno_path': 'annotations/instances_train.json'}})
        resolve_device(cfg)
        start = time.time()
        trainer = RTDETRTrainer(cfg, mode='train')
        steps = len(trainer.loader)
        cfg.epoch = trainer.end_epoch = trainer.cfg.epoch = math.ceil(args.iters / steps)
        trainer.register_callbacks([Recorder(trainer)])
        record(0)
        trainer.train()
        if points[-1]['iteration'] != cfg.epoch * steps:
            record(cfg.epoch * steps)

    result = {
        'config': os.path.relpath(args.config, ROOT),
        'iterations': cfg.epoch * steps, 'epochs': cfg.epoch, 'steps_per_epoch': steps,
        'batch_size': cfg.TrainReader['batch_size'], 'snapshot_epoch': args.snapshot_epoch,
        'paddle': paddle.__version__, 'python': sys.version.split()[0],
        'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
        **summarize(points, args.warmup),
        'notes': 'rss_mb is what the OS reports: it rises while a checkpoint is written (every snapshot_epoch) '
                 'and falls back later. rss_trimmed_mb (after gc.collect and malloc_trim) is the memory in use: '
                 'the first step allocates activations, gradients and kernel caches, the warm-up fills allocator '
                 'pools, after it steady_kb_per_iter and objects_per_iter are the per-step growth (~0: none). '
                 'Paddle 3.3.1 leaks ~120 bytes per paddle.to_tensor call, so per-step model code avoids it '
                 '(tests/data/test_step_memory.py).',
        'points': points,
    }
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    print('iterations {iterations}: RSS {rss_after_first_step_mb} MB after step 1, {rss_end_mb} MB at the end '
          '(max {rss_max_mb}); in use: warm-up +{warmup_mb} MB over {warmup_iterations} iterations, then '
          '{steady_kb_per_iter} KB/iteration ({objects_per_iter} Python objects/iteration)'.format(**result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
