"""Run short `tools/train.py --eval` trainings side by side and read their learning curves (shared by
benchmarks/small_data.py and benchmarks/finetune.py).

Each run gets its own working directory (ppdet writes `bbox.json` into the current one), its own log and
a wall-clock limit; the curve is read from the log with the demo's parser (scripts/demo_curve.py), so a run
killed by its limit still reports the evaluations it finished.
"""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))  # the demo's log parser
from demo_curve import parse  # noqa: E402


def size_overrides(size, reader_key='TrainReader'):
    """`-o` values that train and evaluate the demo model at size x size instead of its 160 x 160.

    `reader_key` is the reader config that holds the batch transforms: 'TrainReader' for the demo config,
    'RTDETRTrainReader' for a config whose TrainReader delegates to it.
    """
    normalize = '{NormalizeImage: {mean: [0., 0., 0.], std: [1., 1., 1.], norm_type: none}}'
    train = (f'[{{BatchRandomResize: {{target_size: [[{size}, {size}]], random_size: True, random_interp: True, '
             f'keep_ratio: False}}}}, {normalize}, {{NormalizeBox: {{}}}}, {{BboxXYXY2XYWH: {{}}}}, {{Permute: {{}}}}]')
    evaluate = (f'[{{Decode: {{}}}}, {{Resize: {{target_size: [{size}, {size}], keep_ratio: False, interp: 2}}}}, '
                f'{normalize}, {{Permute: {{}}}}]')
    return [f'eval_size=[{size}, {size}]', f'{reader_key}.batch_transforms={train}',
            f'EvalReader.sample_transforms={evaluate}']


def seed_flags(seed=0):
    """`--seed N` if tools/train.py has it (issue 9 part 1), else ppdet's `--enable_ce` (seed 0 only)."""
    with open(os.path.join(ROOT, 'tools', 'train.py')) as f:
        if "'--seed'" in f.read():
            return ['--seed', str(seed)]
    if seed != 0:
        raise SystemExit(f'tools/train.py has no --seed: only seed 0 (--enable_ce) can be used, not {seed}')
    return ['--enable_ce']


def start(name, config, overrides, out_dir, extra_args=(), seed=0):
    """Start one training in the background; returns a dict to pass to `finish`."""
    run_dir = os.path.join(out_dir, name)
    os.makedirs(run_dir, exist_ok=True)
    opts = ['save_dir=' + run_dir, 'output_eval=' + run_dir] + list(overrides)
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '-c', os.path.join(ROOT, config), '--eval',
           *seed_flags(seed), *extra_args, '-o', *opts]
    log_path = os.path.join(run_dir, 'train.log')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    log = open(log_path, 'w')
    # a session of its own, so that the reader's worker processes are stopped with the run
    proc = subprocess.Popen(cmd, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return {'name': name, 'proc': proc, 'log': log, 'log_path': log_path, 'start': time.time(),
            'config': config, 'overrides': list(overrides), 'extra_args': list(extra_args), 'run_dir': run_dir,
            'seed': seed}


def finish(run, limit_s):
    """Wait for `run` (killing it and its workers `limit_s` s after its start) and return its curve as a dict."""
    timed_out = False
    try:
        run['proc'].wait(timeout=max(1., limit_s - (time.time() - run['start'])))
    except subprocess.TimeoutExpired:
        os.killpg(run['proc'].pid, signal.SIGKILL)
        run['proc'].wait()
        timed_out = True
    run['log'].close()
    with open(run['log_path']) as f:
        curve = parse(f)
    return {'config': run['config'], 'seed': run['seed'], 'overrides': run['overrides'],
            'extra_args': run['extra_args'],
            'returncode': run['proc'].returncode, 'timed_out': timed_out,
            'process_wall_s': round(time.time() - run['start']), **curve}


def run_all(specs, out_dir, limit_s, parallel, seed=0):
    """specs: [(name, config, overrides, extra_args)] -> {name: curve}, at most `parallel` at a time."""
    results, pending, running = {}, list(specs), []
    while pending or running:
        while pending and len(running) < parallel:
            name, config, overrides, extra = pending.pop(0)
            running.append(start(name, config, overrides, out_dir, extra, seed))
        run = running.pop(0)
        results[run['name']] = finish(run, limit_s)
        print(f"{run['name']}: {results[run['name']]['evaluations'][-1:]}", flush=True)
    return results


def load_average():
    return round(os.getloadavg()[0], 2)


def first_reaching(curve, ap50):
    """(iteration, wall_s) of the first evaluation with AP50 >= ap50, or None."""
    for point in curve['evaluations']:
        if point['ap50'] >= ap50:
            return {'iteration': point['iteration'], 'wall_s': point['wall_s']}
    return None
