"""One training run per save_dir, checked writable before any step (ppdet_rtdetr.engine.run_folder).

The tests run as root (CI too), for whom chmod does not make a folder read-only. The unwritable folders here
are real all the same: a file where the folder should be (no privilege needed), and, in a private mount
namespace (``unshare -m``, root only: skipped elsewhere), a read-only bind mount and a 1 MB tmpfs that cannot
hold the checkpoint.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import paddle
import pytest

from helpers.data_cases import LogRecords, checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine import RTDETRTrainer, run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD = ("import sys; from ppdet_rtdetr.engine.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read()")


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out/rtdetr_tiny (until the test ends)."""
    folder = tmp_path / 'out' / 'rtdetr_tiny'
    proc = subprocess.Popen([sys.executable, '-c', HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert 'held\n' in iter(proc.stdout.readline, '')  # after ppdet's import-time notices
    yield proc, folder
    proc.kill()
    proc.wait()


def _trainer(tmp_path, **overrides):
    data = make_shapes(tmp_path / 'data')
    with paddle.utils.unique_name.guard():
        return RTDETRTrainer(light_config(tmp_path / 'out', data, **overrides), mode='train')


def test_a_second_run_on_the_folder_is_refused_naming_the_first(tmp_path, holder):
    proc, folder = holder
    with open(folder / run_folder.LOCK_NAME) as f:
        first = json.load(f)
    assert (first['pid'], first['host']) == (proc.pid, socket.gethostname())
    assert first['command'].endswith(' -c {}'.format(folder))  # python -c CODE FOLDER: its sys.argv is -c, FOLDER
    (folder / '.0.pdparams.0123456789ab.tmp').write_bytes(b'the running save of the first run')

    trainer = _trainer(tmp_path)
    with pytest.raises(run_folder.RunFolderBusy) as error:
        trainer.train()
    assert str(error.value) == (
        'save_dir {0} is in use by another training run (pid {1} on {2}, since {3}, command: {4}); its lock is '
        '{0}/.train.lock. Wait for that run to end or give this one another save_dir (-o save_dir=...).'.format(
            folder, proc.pid, first['host'], first['since'], first['command']))
    # refused before any step and before touching the first run's files
    assert checkpoint_files(folder) == ['.0.pdparams.0123456789ab.tmp', '.train.lock']
    assert trainer.status.get('step_id') is None

    # a data-parallel rank > 0 takes no lock: the first run's lock and temporary stay as they are
    with run_folder.hold(str(folder), 1 << 20, rank=1):
        pass
    assert checkpoint_files(folder) == ['.0.pdparams.0123456789ab.tmp', '.train.lock']


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, holder):
    proc, folder = holder
    proc.kill()  # dies holding the flock: the OS drops it, the file and its record stay
    proc.wait()
    with LogRecords('ppdet_rtdetr.engine.run_folder') as logs:
        lock = run_folder.RunLock(str(folder)).acquire()
    with open(folder / run_folder.LOCK_NAME) as f:
        assert json.load(f)['pid'] == os.getpid()
    lock.release()
    assert logs.messages[0][0] == 'WARNING'
    assert logs.messages[0][1].startswith('{}/.train.lock: taking over the lock of pid {} on {} (since '.format(
        folder, proc.pid, socket.gethostname()))
    assert checkpoint_files(folder) == []  # released: the file is gone


def test_without_fcntl_the_lock_is_an_exclusive_file(tmp_path, monkeypatch):
    """The O_EXCL form (platforms without fcntl): a live pid of this host refuses, a dead one is taken over."""
    monkeypatch.setattr(run_folder, 'fcntl', None)
    folder = tmp_path / 'run'
    live = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE)
    record = {'pid': live.pid, 'host': socket.gethostname(), 'since': 'then', 'command': 'train'}
    folder.mkdir()
    (folder / run_folder.LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(run_folder.RunFolderBusy, match=r'\(pid {} on '.format(live.pid)):
        run_folder.RunLock(str(folder)).acquire()
    live.kill()
    live.wait()  # reaped: the pid no longer runs
    with LogRecords('ppdet_rtdetr.engine.run_folder') as logs:
        run_folder.RunLock(str(folder)).acquire().release()
    assert logs.messages == [('WARNING', '{}/.train.lock: taking over the lock of pid {} on {} (since then), a run '
                                         'that ended without releasing it'.format(folder, live.pid, record['host']))]
    assert checkpoint_files(folder) == []


def test_a_file_in_place_of_the_folder_is_refused_before_training(tmp_path):
    (tmp_path / 'out').write_text('not a folder')
    trainer = _trainer(tmp_path)
    with pytest.raises(run_folder.UnwritableRunFolder) as error:
        trainer.train()
    folder = tmp_path / 'out' / 'rtdetr_tiny'
    assert str(error.value) == (
        "save_dir {0}: cannot write checkpoints there (creating the lock file {0}/.train.lock failed: [Errno 20] "
        "Not a directory: '{0}'). Training was not started; give it a writable folder with room for checkpoints "
        "(-o save_dir=...).".format(folder))
    assert trainer.status.get('step_id') is None


def test_checkpoint_estimate_matches_a_written_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, epoch=1)
    estimate = run_folder.checkpoint_bytes(trainer.model, trainer.use_ema)
    with paddle.utils.unique_name.guard():
        trainer.train()
    folder = tmp_path / 'out' / 'rtdetr_tiny'
    written = sum(os.path.getsize(folder / name) for name in ('model_final.pdparams', 'model_final.pdopt'))
    # the rest is pickle framing, ~200 bytes per tensor: 1.4% of this tiny model, far less of a real one
    assert 0.97 < estimate / written <= 1, (estimate, written)
    # no lock, no probe left
    assert checkpoint_files(folder) == ['model_final.manifest.json', 'model_final.pdopt', 'model_final.pdparams']


UNSHARED = """
import os, sys
from ppdet_rtdetr.engine import run_folder
for folder, size in ((sys.argv[1], 1 << 20), (sys.argv[2], 4 << 20), (sys.argv[2], 256 << 10)):
    try:
        with run_folder.hold(folder, size):
            print('>', 'ok', folder, size)
    except run_folder.UnwritableRunFolder as e:
        print('>', e)
print('>', os.listdir(sys.argv[2]))
"""


@pytest.mark.skipif(not shutil.which('unshare'), reason='needs unshare (util-linux)')
def test_read_only_and_full_folders_are_refused(tmp_path):
    """A read-only bind mount and a 1 MB tmpfs, in a mount namespace of the child's own."""
    read_only, small = tmp_path / 'ro', tmp_path / 'small'
    read_only.mkdir()
    small.mkdir()
    script = 'mount --bind -o ro {0} {0} && mount -t tmpfs -o size=1m tmpfs {1} && exec "$@"'.format(read_only, small)
    proc = subprocess.run(['unshare', '-m', 'sh', '-c', script, 'sh', sys.executable, '-c', UNSHARED,
                           str(read_only), str(small)], capture_output=True, text=True, env=_env())
    if proc.returncode != 0 and 'ppdet' not in proc.stderr:  # unshare or mount refused
        pytest.skip('no private mount namespace here (not root?): ' + proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line[2:] for line in proc.stdout.splitlines() if line.startswith('> ')]
    assert lines == [
        "save_dir {0}: cannot write checkpoints there (creating the lock file {0}/.train.lock failed: [Errno 30] "
        "Read-only file system: '{0}/.train.lock'). Training was not started; give it a writable folder with room "
        "for checkpoints (-o save_dir=...).".format(read_only),
        "save_dir {}: cannot write checkpoints there (writing a 4.2 MB test file (one checkpoint) failed: [Errno 28] "
        "No space left on device). Training was not started; give it a writable folder with room for checkpoints "
        "(-o save_dir=...).".format(small),
        'ok {} {}'.format(small, 256 << 10),
        '[]']  # neither lock nor test file left
