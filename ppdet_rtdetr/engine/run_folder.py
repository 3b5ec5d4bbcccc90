"""One training run per checkpoint folder, checked usable before the first step.

ppdet 2.6.0 lets two trainings share a ``save_dir``: both run to the end and each silently overwrites the
other's checkpoints; a read-only or full folder is noticed at the first save, after an epoch of training.
``RTDETRTrainer.train`` runs inside ``training_run``, which, on rank 0 only (the only rank that saves):

1. takes the folder's lock (``RunLock``: ``<save_dir>/.train.lock``, holding pid, host, start time and
   command line). Where ``fcntl`` exists the lock is an ``flock`` on the open file, which the OS drops when the
   process dies (even by ``kill -9``); a lock file whose flock is free was left by a dead run and is taken over
   with a warning naming its pid. Elsewhere the file is created with ``O_EXCL``, and a file naming a pid of
   this host that no longer runs is taken over. A run that finds the lock held is refused (``RunFolderBusy``)
   with a message naming the other run and the folder;
2. removes the temporary files of saves that never finished (``.<name>.<12 hex>.tmp``, as
   ``checkpoint._write_temp`` names them: left by ``kill -9``, a power cut), with one line naming them. The
   lock is held by then, so no running save's temporaries are touched;
3. writes, fsyncs and removes a file of one checkpoint's size (``checkpoint_bytes``). The space is reserved
   with ``posix_fallocate`` (which allocates the blocks, so a full disk fails it at once, unlike a sparse
   file) or, where that is unavailable, written as zeros. A folder that cannot be created or written, or
   that has no room, is refused (``UnwritableRunFolder``) naming the folder and the error;
4. handles SIGTERM / SIGINT for the rest of ``train`` (``stop_signals.stop_cleanly``).

Every rank handles the signals; ranks > 0 take no lock (rank 0's lock must not refuse them). Eval and infer
save nothing and lock nothing.
"""
import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time

from ppdet.engine.callbacks import Checkpointer
from ppdet.utils.logger import setup_logger

from . import checkpoint, stop_signals

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = setup_logger(__name__)

__all__ = ['LOCK_NAME', 'RunFolderBusy', 'RunLock', 'UnwritableRunFolder', 'check_writable', 'checkpoint_bytes',
           'hold', 'remove_stale_temps', 'training_run']

LOCK_NAME = '.train.lock'
_CHUNK = 1 << 20  # bytes per write where space cannot be reserved with posix_fallocate


class RunFolderBusy(RuntimeError):
    """Another training run holds the lock of the save_dir; the message names it and the folder."""


class UnwritableRunFolder(OSError):
    """The save_dir cannot be created, written or hold a checkpoint; the message names it and the error."""


def _unwritable(folder, action, error):
    return UnwritableRunFolder('save_dir {}: cannot write checkpoints there ({} failed: {}). Training was not '
                               'started; give it a writable folder with room for checkpoints '
                               '(-o save_dir=...).'.format(folder, action, error))


def _record():
    return {'pid': os.getpid(), 'host': socket.gethostname(),
            'since': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
            'command': ' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}


def _read_record(fd):
    """The record in a lock file ({} when it is empty or not ours: a run that is just starting)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode('utf-8', 'replace')
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record):
    if not record:
        return 'a run that has not written its pid yet'
    return 'pid {} on {}, since {}, command: {}'.format(record.get('pid'), record.get('host'), record.get('since'),
                                                        record.get('command'))


def _pid_alive(pid):
    if os.name != 'posix' or not isinstance(pid, int):
        return True  # cannot tell (os.kill(pid, 0) would end the process on Windows): keep the lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock(object):
    """The lock of one save_dir, held from ``acquire`` to ``release`` (see the module docstring).

    Args:
        folder (str): the save_dir; created if needed.

    Raises (acquire):
        RunFolderBusy: another live run holds it.
        UnwritableRunFolder: the folder or its lock file cannot be created.
    """

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd = None

    def acquire(self):
        try:
            os.makedirs(self.folder, exist_ok=True)
            previous = self._flock() if fcntl is not None else self._create_exclusive()
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, json.dumps(_record()).encode('utf-8'))
        except OSError as e:
            self.release()
            raise _unwritable(self.folder, 'creating the lock file ' + self.path, e)
        if previous:
            logger.warning('{}: taking over the lock of pid {} on {} (since {}), a run that ended without '
                           'releasing it'.format(self.path, previous.get('pid'), previous.get('host'),
                                                 previous.get('since')))
        return self

    def _busy(self, record):
        return RunFolderBusy('save_dir {} is in use by another training run ({}); its lock is {}. Wait for that '
                             'run to end or give this one another save_dir (-o save_dir=...).'.format(
                                 self.folder, _describe(record), self.path))

    def _flock(self):
        """flock the lock file; returns the record a dead holder left in it ({} if none)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = _read_record(fd)
                os.close(fd)
                raise self._busy(record)
            except BaseException:
                os.close(fd)
                raise
            # the previous holder may have released (removed) the file between our open and our flock: the
            # flock we got is then on a file nobody else will open, so start again on the current one
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return _read_record(fd)
            os.close(fd)

    def _create_exclusive(self):
        """Create the lock file with O_EXCL; returns the record of a dead holder it replaced ({} if none)."""
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            return {}
        except FileExistsError:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                record = _read_record(fd)
            finally:
                os.close(fd)
        if record.get('host') != socket.gethostname() or _pid_alive(record.get('pid')):
            raise self._busy(record)
        os.remove(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return record

    def release(self):
        """Remove the lock file and close it (a no-op when not held)."""
        if self._fd is None:
            return
        if fcntl is None:  # Windows cannot remove an open file; without flock the order does not matter
            os.close(self._fd)
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        if fcntl is not None:  # closed last: the flock is held until the file is gone (see _flock)
            os.close(self._fd)
        self._fd = None


def remove_stale_temps(folder):
    """Remove the temporary files of unfinished saves in ``folder``; returns their names (logged in one line).

    Call it only while holding the folder's lock: a running save's temporaries have the same form.
    """
    stale = sorted(name for name in os.listdir(folder)
                   if checkpoint.TEMP_NAME.match(name) and os.path.isfile(os.path.join(folder, name)))
    for name in stale:
        os.remove(os.path.join(folder, name))
    if stale:
        logger.info('Removed {} temporary file(s) of interrupted saves from {}: {}'.format(
            len(stale), folder, ', '.join(stale)))
    return stale


def _reserve(fd, size):
    if hasattr(os, 'posix_fallocate'):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # only "not supported here" falls through
                raise
    zeros = bytes(_CHUNK)
    for start in range(0, size, _CHUNK):
        os.write(fd, zeros[:min(_CHUNK, size - start)])


def check_writable(folder, size):
    """Create, fill to ``size`` bytes, fsync and remove a file in ``folder`` (see the module docstring).

    Raises:
        UnwritableRunFolder: naming the folder, the size and the error (read-only, no space, ...).
    """
    probe = checkpoint.temp_path(os.path.join(folder, 'writable-check'))  # a stale one is removed at start
    action = 'writing a {:.1f} MB test file (one checkpoint)'.format(size / 1e6)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _reserve(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise _unwritable(folder, action, e)


def checkpoint_bytes(model, use_ema):
    """Bytes of one checkpoint of ``model``, estimated before the optimizer has any state.

    Its state dict (weights and buffers) once, twice with EMA (``.pdparams`` + ``.pdema``), plus two values
    per trainable parameter for the optimizer (AdamW's moments; ``.pdopt``). Pickle framing adds well under 1%.
    """
    weights = sum(v.size * v.element_size() for v in model.state_dict().values())
    trainable = sum(p.size * p.element_size() for p in model.parameters() if not p.stop_gradient)
    return weights * (2 if use_ema else 1) + 2 * trainable


@contextlib.contextmanager
def hold(folder, size, rank=0):
    """Rank 0: the folder locked, cleared of stale temporaries and checked for ``size`` bytes, until the end of
    the block. Other ranks: nothing. Raises as ``RunLock.acquire`` and ``check_writable``."""
    if rank != 0:
        yield
        return
    lock = RunLock(folder).acquire()
    try:
        remove_stale_temps(folder)
        check_writable(folder, size)
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def training_run(trainer):
    """What ``RTDETRTrainer.train`` runs in: ``hold`` on the folder its checkpointer saves into, and
    ``stop_signals.stop_cleanly`` (see the module docstring)."""
    folders = [c.save_dir for c in getattr(trainer, '_callbacks', ()) if isinstance(c, Checkpointer)]
    if not folders:  # nothing is saved (no checkpointer): nothing to lock
        yield
        return
    size = checkpoint_bytes(trainer.model, trainer.use_ema)
    with hold(folders[0], size, trainer._local_rank), stop_signals.stop_cleanly(folders[0]):
        yield
