"""Crash-safe checkpoints: atomic writes, and resuming from the newest complete checkpoint.

ppdet 2.6.0's ``save_model`` writes ``<name>.pdparams`` (+ ``.pdema``) and ``<name>.pdopt`` in place: a
run killed while saving (preemption, out of disk, OOM killer) leaves truncated files under the final name,
and ``--resume`` then fails to unpickle them or, when ``.pdopt`` is missing, silently restarts at epoch 0.

``save_model`` here has ppdet's signature. It writes every file of a checkpoint to a temporary file in the
same folder, fsyncs them, and only then renames them into place with ``os.replace`` (atomic on POSIX),
``.pdopt`` last. A file under a checkpoint's final name is therefore always complete, and a checkpoint is
complete when its ``.pdopt`` is there. A crash before the renames leaves the previous checkpoints as they
were (plus a hidden ``.<name>.*.tmp`` file, which nothing reads).

``resume_path`` is what ``Trainer.resume_weights`` resolves ``--resume`` with: a checkpoint path, or a
folder, meaning the newest complete checkpoint in it. ``load_weight`` then reads that checkpoint (model,
optimizer, EMA) as ppdet's does, every file through ``read_state``: ``safe_load.load``, which refuses a pickle
that is not only data before anything of it runs.
"""
import os
import uuid

import numpy as np
import paddle

from ppdet.utils.checkpoint import is_url
from ppdet.utils.download import get_weights_path
from ppdet.utils.logger import setup_logger

from . import safe_load

logger = setup_logger(__name__)

__all__ = ['IncompleteCheckpointError', 'load_weight', 'read_state', 'resume_path', 'save_atomic', 'save_model']


class IncompleteCheckpointError(FileNotFoundError):
    """--resume names a checkpoint without its optimizer state, or a folder without any checkpoint."""


def _write_temp(obj, path):
    """paddle.save(obj) into a fsynced temporary file beside ``path``; returns the temporary path."""
    folder, name = os.path.split(path)
    # a fresh name rather than mkstemp: paddle.save creates the file, so it gets the umask's mode, not 0600
    temp = os.path.join(folder, '.{}.{}.tmp'.format(name, uuid.uuid4().hex[:12]))
    try:
        paddle.save(obj, temp)
        with open(temp, 'rb+') as f:
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    return temp


def _fsync_dir(folder):
    # makes the renames themselves durable; directories cannot be opened for fsync on Windows
    if os.name == 'posix':
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_atomic(files):
    """Writes ``{path: object}`` with paddle.save so that each path holds either its old or its new file.

    All objects are written and fsynced to temporary files first; the renames follow in the given order.
    On any error the temporary files are removed and the error is raised.
    """
    temps = {}
    try:
        for path, obj in files.items():
            temps[path] = _write_temp(obj, path)
        for path, temp in list(temps.items()):
            os.replace(temp, path)
            del temps[path]
    finally:
        for temp in temps.values():
            os.remove(temp)
    _fsync_dir(os.path.dirname(next(iter(files))))


def save_model(model, optimizer, save_dir, save_name, last_epoch, ema_model=None):
    """ppdet's ``save_model``, written atomically (see the module docstring).

    Args:
        model (dict): the model state dict.
        optimizer (paddle.optimizer.Optimizer): its state is saved with ``last_epoch``.
        save_dir (str): folder, created if needed.
        save_name (str): file stem, e.g. ``'3'`` or ``'model_final'``.
        last_epoch (int): the number of finished epochs (what ``--resume`` continues from).
        ema_model (dict|None): EMA weights; saved as ``.pdparams`` with ``model`` as ``.pdema``, as ppdet.
    """
    if paddle.distributed.get_rank() != 0:
        return
    os.makedirs(save_dir, exist_ok=True)
    stem = os.path.join(save_dir, save_name)
    files = {stem + '.pdparams': model if ema_model is None else ema_model}
    if ema_model is not None:
        files[stem + '.pdema'] = model
    state = optimizer.state_dict()
    state['last_epoch'] = last_epoch
    files[stem + '.pdopt'] = state  # last: its presence marks the checkpoint complete
    save_atomic(files)
    logger.info('Save checkpoint: {}'.format(save_dir))


def _epoch_order(stem):
    name = os.path.basename(stem)
    return float('inf') if name == 'model_final' else int(name)


def resume_path(path):
    """The checkpoint ``--resume path`` continues from.

    Args:
        path (str): a checkpoint (with or without a suffix), or a folder of checkpoints.

    Returns:
        str: the checkpoint path without suffix. For a folder, the complete checkpoint (``N`` or
        ``model_final``, with both ``.pdparams`` and ``.pdopt``) whose ``.pdopt`` was written last; ties go
        to the higher epoch. ``best_model`` is not a resume point: its weights may be EMA ones.

    Raises:
        IncompleteCheckpointError: if the checkpoint lacks ``.pdparams`` or ``.pdopt``, or the folder
            holds no complete checkpoint.
    """
    if os.path.isdir(path):
        names = [f[:-len('.pdopt')] for f in os.listdir(path) if f.endswith('.pdopt')]
        stems = [os.path.join(path, n) for n in names if n.isdigit() or n == 'model_final']
        stems = [s for s in stems if os.path.isfile(s + '.pdparams')]
        if not stems:
            raise IncompleteCheckpointError('--resume {}: no complete checkpoint (N.pdparams with N.pdopt, or '
                                            'model_final) in this folder'.format(path))
        chosen = max(stems, key=lambda s: (os.path.getmtime(s + '.pdopt'), _epoch_order(s)))
        logger.info('Resuming from {}, the newest complete checkpoint in {}'.format(chosen, path))
        return chosen
    stem, ext = os.path.splitext(path)
    stem = stem if ext in ('.pdparams', '.pdopt', '.pdema') else path
    absent = [s for s in ('.pdparams', '.pdopt') if not os.path.isfile(stem + s)]
    if absent:
        # without .pdopt ppdet's load_weight would restart at epoch 0 with a fresh optimizer
        raise IncompleteCheckpointError('--resume {}: {} missing, so the checkpoint is incomplete. Resume '
                                        'from its folder to take the newest complete checkpoint.'.format(
                                            path, ' and '.join(stem + s for s in absent)))
    return stem


def read_state(path):
    """The object saved in the Paddle weights file ``path`` (a state dict), read with ``safe_load.load``."""
    return safe_load.load(path)


def load_weight(model, weight, optimizer=None, ema=None, exchange=True):
    """ppdet's ``load_weight`` (what ``Trainer.resume_weights`` calls), reading every file with ``read_state``.

    Args:
        model (paddle.nn.Layer): filled from ``<weight>.pdparams``; every model key must be in the file.
        weight (str): checkpoint path with or without suffix, or a ppdet URL.
        optimizer (paddle.optimizer.Optimizer|None): restored from ``<weight>.pdopt`` when that exists.
        ema (ppdet ModelEMA|None): restored when ``<weight>.pdema`` exists: ``.pdparams`` then holds the EMA
            weights and ``.pdema`` the model's (``exchange``, as ``save_model`` writes them).
        exchange (bool): False reads the EMA weights from ``.pdema`` instead.

    Returns:
        int: ``last_epoch`` saved in ``.pdopt`` (0 without an optimizer or ``.pdopt``).

    Raises:
        ValueError: ``.pdparams`` missing, or model keys not in it.
        safe_load.UnsafeWeightsError: a file whose pickle is not only data.
    """
    if is_url(weight):
        weight = get_weights_path(weight)
    stem, ext = os.path.splitext(weight)
    stem = stem if ext in ('.pdparams', '.pdopt', '.pdema', '.pdmodel') else weight
    params_path = stem + '.pdparams'
    if not os.path.exists(params_path):
        raise ValueError('Model pretrain path {} does not exists.'.format(params_path))

    ema_state = None
    if ema is not None and os.path.exists(stem + '.pdema'):
        ema_path, params_path = (params_path, stem + '.pdema') if exchange else (stem + '.pdema', params_path)
        ema_state = read_state(ema_path)
        logger.info('Loading ema_model weights from {}'.format(ema_path))
    param_state = read_state(params_path)
    model_state = model.state_dict()
    absent = [key for key in model_state if key not in param_state]
    if absent:
        raise ValueError('Load weight {} incorrectly: {} model keys are not in {} (e.g. {})'.format(
            weight, len(absent), params_path, ', '.join(absent[:5])))
    loaded = {}
    for key, target in model_state.items():
        value = param_state[key]
        value = paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
        loaded[key] = value if value.dtype == target.dtype else value.astype(target.dtype)
    model.set_dict(loaded)
    logger.info('Finish resuming model weights: {}'.format(params_path))

    last_epoch = 0
    if optimizer is not None and os.path.exists(stem + '.pdopt'):
        opt_state = read_state(stem + '.pdopt')
        # as ppdet: entries of the optimizer that the file lacks keep their current values
        current = optimizer.state_dict()
        opt_state.update({key: value for key, value in current.items() if key not in opt_state})
        last_epoch = opt_state.pop('last_epoch', 0)
        optimizer.set_state_dict(opt_state)
        if ema_state is not None:
            ema.resume(ema_state, opt_state['LR_Scheduler']['last_epoch'])
    elif ema_state is not None:
        ema.resume(ema_state)
    return last_epoch
