"""SIGTERM / SIGINT / SIGKILL during real tiny trainings (signal_train_worker.py, one process each).

The worker signals itself at an exact point (in the middle of a checkpoint's save, or in a training step's
forward pass). Expected: a save in progress finishes, the process exits 128 + signum with one line naming the
last complete checkpoint, Paddle's C++ "FatalError" trace never appears, nothing temporary is left, and the
folder resumes. A kill -9 cannot be handled: the next run takes its lock over and removes its temporary file.
"""
import ctypes
import json
import os
import signal
import subprocess
import sys

import paddle

from helpers.data_cases import LogRecords, checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine import RTDETRTrainer, run_folder, stop_signals

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'signal_train_worker.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_worker(tmp_path, epochs, signame, count, where):
    data = tmp_path / 'data'
    if not data.exists():
        make_shapes(data)  # 3 usable train images: one step per epoch
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, WORKER, str(tmp_path / 'out'), str(data), str(epochs), signame,
                             str(count), where], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout, proc.stderr = proc.communicate(timeout=300)
    stopped = [line for line in proc.stderr.splitlines() if line.startswith('Training stopped')]
    return proc, stopped


def test_sigterm_during_a_save_finishes_it_and_the_folder_resumes(tmp_path):
    proc, stopped = _run_worker(tmp_path, 3, 'TERM', 1, 'save:1')
    run_dir = tmp_path / 'out' / 'rtdetr_tiny'
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert stopped == ['Training stopped by SIGTERM: the last complete checkpoint is {0}/1 (resume with -r {0})'
                       .format(run_dir)], proc.stderr[-3000:]
    assert 'FatalError' not in proc.stderr and 'Traceback' not in proc.stderr
    # checkpoint 1 was completed after the signal; no temporary, no lock left
    assert checkpoint_files(run_dir) == ['0.manifest.json', '0.pdopt', '0.pdparams', '1.manifest.json', '1.pdopt',
                                        '1.pdparams']
    assert paddle.load(str(run_dir / '1.pdopt'))['last_epoch'] == 2

    cfg = light_config(tmp_path / 'out', str(tmp_path / 'data'), epoch=3)
    with paddle.utils.unique_name.guard():
        trainer = RTDETRTrainer(cfg, mode='train')
    trainer.resume_weights(str(run_dir))
    assert trainer.start_epoch == 2
    with paddle.utils.unique_name.guard():
        trainer.train()
    assert paddle.load(str(run_dir / 'model_final.pdopt'))['last_epoch'] == 3


def test_sigint_before_any_checkpoint_says_there_is_none(tmp_path):
    proc, stopped = _run_worker(tmp_path, 2, 'INT', 1, 'step:1')
    run_dir = tmp_path / 'out' / 'rtdetr_tiny'
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert stopped == ['Training stopped by SIGINT: there is no complete checkpoint in {} yet'.format(run_dir)]
    assert 'KeyboardInterrupt' not in proc.stderr and 'FatalError' not in proc.stderr
    assert checkpoint_files(run_dir) == []


def test_after_kill_9_the_next_run_takes_the_lock_over_and_removes_the_temporary(tmp_path):
    proc, _ = _run_worker(tmp_path, 1, 'KILL', 1, 'save:model_final')
    run_dir = tmp_path / 'out' / 'rtdetr_tiny'
    assert proc.returncode == -signal.SIGKILL
    left = checkpoint_files(run_dir)
    temps = [name for name in left if name.startswith('.model_final.pdparams.') and name.endswith('.tmp')]
    assert left == sorted(temps + [run_folder.LOCK_NAME]) and len(temps) == 1
    with open(run_dir / run_folder.LOCK_NAME) as f:
        dead = json.load(f)

    cfg = light_config(tmp_path / 'out', str(tmp_path / 'data'), epoch=1)
    with paddle.utils.unique_name.guard():
        trainer = RTDETRTrainer(cfg, mode='train')
    with LogRecords('ppdet_rtdetr.engine.run_folder') as logs, paddle.utils.unique_name.guard():
        trainer.train()
    assert logs.messages == [
        ('WARNING', '{}: taking over the lock of pid {} on {} (since {}), a run that ended without releasing it'
         .format(run_dir / run_folder.LOCK_NAME, proc.pid, dead['host'], dead['since'])),
        ('INFO', 'Removed 1 temporary file(s) of interrupted saves from {}: {}'.format(run_dir, temps[0]))]
    assert dead['pid'] == proc.pid
    assert checkpoint_files(run_dir) == ['model_final.manifest.json', 'model_final.pdopt', 'model_final.pdparams']


def _raw_action(signum):
    """The handler address the OS calls for `signum` (sa_handler, the first field of struct sigaction)."""
    libc = stop_signals._libc()
    buf = ctypes.create_string_buffer(stop_signals._SIGACTION_BYTES)
    assert libc.sigaction(signum, None, buf) == 0
    return buf.raw[:ctypes.sizeof(ctypes.c_void_p)]


def test_handlers_are_ours_inside_and_restored_after():
    """Paddle's C++ SIGTERM handler (which Python's getsignal reports as SIG_DFL) comes back exactly."""
    before = {s: (signal.getsignal(s), _raw_action(s)) for s in stop_signals.SIGNALS}
    with stop_signals.stop_cleanly('unused'):
        assert all(signal.getsignal(s) is stop_signals._handle for s in stop_signals.SIGNALS)
        assert _raw_action(signal.SIGTERM) != before[signal.SIGTERM][1]  # Paddle's, replaced
    assert {s: (signal.getsignal(s), _raw_action(s)) for s in stop_signals.SIGNALS} == before
