"""SIGTERM / SIGINT during training: never a half-written checkpoint, one line saying where to resume.

Paddle installs C++ handlers at import: SIGTERM then prints "FatalError: `Termination signal` is detected"
with a C++ trace and ends the process wherever it is, a checkpoint save included (leaving its ``.tmp``).
``stop_cleanly`` (around ``RTDETRTrainer.train``, see ``run_folder.training_run``) replaces the handlers of
SIGTERM and SIGINT with a Python one for its block and restores the previous ones (Paddle's C++ handler too:
it is saved and put back with ``sigaction``, which ``signal.signal`` cannot do for a handler it did not set).

On a signal:

* outside a save, training stops at once;
* during a save (a function decorated ``deferring``: ``checkpoint.save_model``) the save finishes first, then
  training stops. Further signals during the save change nothing: interrupting it half-way could leave a
  temporary file that its cleanup has not registered yet, and a save takes seconds.

Stopping unwinds the Python stack (every ``finally`` runs: the folder's lock is released) and the process
exits with status 128 + signal number (143 for SIGTERM, 130 for SIGINT) after ONE line on stderr naming the
last complete checkpoint of the folder (``checkpoint.resume_path``) or saying there is none yet.
``kill -9`` cannot be handled: its ``.tmp`` is removed at the next start (``run_folder``).
"""
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading

__all__ = ['SIGNALS', 'deferring', 'stop_cleanly']

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGACTION_BYTES = 512  # more than sizeof(struct sigaction) on any libc (152 on glibc x86-64): kept opaque

_saves = 0  # calls of `deferring` functions in progress
_pending = None  # the signal that arrived during them
_owner = None  # pid that installed the handler; a forked child (a DataLoader worker) inherits it
_previous = {}  # signum -> the Python-level handler before stop_cleanly
_stopping = False  # a _Stop is on its way: later signals change nothing


class _Stop(BaseException):
    """Raised in the main thread to stop training; ``stop_cleanly`` turns it into the exit."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _stop(signum):
    """The exception that stops training; signals after it change nothing."""
    global _stopping
    _stopping = True
    return _Stop(signum)


def deferring(function):
    """Decorator: a stop signal arriving while ``function`` runs takes effect when it returns or raises."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        global _saves, _pending
        _saves += 1
        try:
            return function(*args, **kwargs)
        finally:
            _saves -= 1
            if _saves == 0 and _pending is not None:
                signum, _pending = _pending, None
                raise _stop(signum)

    return wrapper


def _handle(signum, frame):
    global _pending
    if os.getpid() != _owner:  # a forked child: behave as it would have without us
        previous = _previous.get(signum)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        signal.raise_signal(signum)
        return
    if _stopping or _pending is not None:
        return
    if _saves:
        _pending = signum
        return
    raise _stop(signum)


def _libc():
    if os.name != 'posix':
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.sigaction.restype = ctypes.c_int
    return libc


def _last_complete(folder):
    """'the last complete checkpoint is X' or 'there is no complete checkpoint in X yet'."""
    from . import checkpoint  # imports this module
    quiet, checkpoint.logger.disabled = checkpoint.logger.disabled, True  # its "Resuming from" is not our line
    try:
        return 'the last complete checkpoint is {} (resume with -r {})'.format(checkpoint.resume_path(folder),
                                                                              folder)
    except checkpoint.IncompleteCheckpointError:
        return 'there is no complete checkpoint in {} yet'.format(folder)
    except Exception as e:  # the process is ending whatever went wrong: say so in the one line
        return 'the last complete checkpoint in {} could not be determined ({})'.format(folder, e)
    finally:
        checkpoint.logger.disabled = quiet


@contextlib.contextmanager
def stop_cleanly(folder):
    """SIGTERM / SIGINT handled as the module docstring says, for the block (main thread only: elsewhere
    Python cannot set handlers, and the block runs unchanged).

    Args:
        folder (str): the checkpoint folder named in the exit line.
    Raises:
        SystemExit: with code 128 + signal number, after the exit line, when a signal stopped the block.
    """
    global _owner, _pending, _stopping
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    libc = _libc()
    raw = {}
    for signum in SIGNALS:
        _previous[signum] = signal.getsignal(signum)
        if libc is not None:
            raw[signum] = ctypes.create_string_buffer(_SIGACTION_BYTES)
            libc.sigaction(signum, None, raw[signum])
    _owner, _pending, _stopping = os.getpid(), None, False
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    except _Stop as stop:
        sys.stderr.write('Training stopped by {}: {}\n'.format(signal.Signals(stop.signum).name,
                                                                  _last_complete(folder)))
        sys.stderr.flush()
        raise SystemExit(128 + stop.signum) from None
    finally:
        for signum in SIGNALS:
            # first Python's own table (None: a handler Python did not set, e.g. Paddle's), then the exact one
            previous = _previous.pop(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            if signum in raw:
                libc.sigaction(signum, raw[signum], None)
        _owner, _pending, _stopping = None, None, False
