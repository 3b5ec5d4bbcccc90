"""Crash-safe checkpoints: atomic writes, and resuming from the newest complete checkpoint.

What ``RTDETRTrainer`` (``ppdet_rtdetr.engine.trainer``) saves and resumes with; ppdet's own Trainer is left
as it is.

ppdet 2.6.0's ``save_model`` writes ``<name>.pdparams`` (+ ``.pdema``) and ``<name>.pdopt`` in place: a
run killed while saving (preemption, out of disk, OOM killer) leaves truncated files under the final name,
and ``--resume`` then fails to unpickle them or, when ``.pdopt`` is missing, silently restarts at epoch 0.

``save_model`` here has ppdet's signature. It writes every file of a checkpoint to a temporary file in the
same folder, fsyncs them, and only then renames them into place with ``os.replace`` (atomic on POSIX),
``.pdopt`` last. A file under a checkpoint's final name is therefore always complete, and a checkpoint is
complete when its ``.pdopt`` is there. A crash before the renames leaves the previous checkpoints as they
were (plus a hidden ``.<name>.*.tmp`` file, which nothing reads).

``resume_path`` is what ``RTDETRTrainer.resume_weights`` resolves ``--resume`` with: a checkpoint path, or a
folder, meaning the newest complete checkpoint in it; ``load_checkpoint`` then reads it. Every weights file
the trainer reads (here and in ``pretrain``) goes through ``read_state``, the one place that unpickles, with
``safe_load.load``: a pickle that is not only data is refused before anything of it runs.
"""
import os
import uuid

import paddle
import paddle.distributed as dist

from ppdet.engine.callbacks import Checkpointer
from ppdet.utils.checkpoint import is_url
from ppdet.utils.download import get_weights_path
from ppdet.utils.logger import setup_logger

from . import safe_load

logger = setup_logger(__name__)

__all__ = ['IncompleteCheckpointError', 'AtomicCheckpointer', 'load_checkpoint', 'load_model_weights', 'read_state',
           'resume_path', 'save_atomic', 'save_model']


class IncompleteCheckpointError(FileNotFoundError):
    """--resume names a checkpoint without its optimizer state, or a folder without any checkpoint."""


def read_state(path):
    """The object saved in ``path`` (a ``.pdparams`` / ``.pdopt`` / ``.pdema`` file): the one weights reader.

    ``safe_load.load``: what ``paddle.load`` gives for a genuine file; a pickle that names anything but data
    (``os.system``, ...) raises ``safe_load.UnsafeWeightsError`` naming the file and the global, nothing of it
    run (``allow_unsafe_weights: true`` hands a trusted file to ``paddle.load``, with a warning).
    """
    return safe_load.load(path)


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


def load_checkpoint(model, path, optimizer, ema=None):
    """Restores a training checkpoint written by ``save_model``, as ppdet's ``load_weight`` does for resuming.

    Args:
        model (paddle.nn.Layer): every one of its state-dict keys must be in the checkpoint.
        path (str): checkpoint path without suffix (``resume_path`` gives it).
        optimizer (paddle.optimizer.Optimizer): gets ``<path>.pdopt`` (keys it lacks keep their values).
        ema (ppdet.optimizer.ModelEMA|None): with a ``<path>.pdema``, the EMA weights are ``.pdparams`` and the
            model's are ``.pdema`` (``save_model`` exchanges them); the EMA step is the scheduler's step.
    Returns:
        int: the number of finished epochs (``last_epoch`` of the ``.pdopt``), where training continues.
    Raises:
        KeyError: naming the model keys the checkpoint lacks (another architecture or config).
    """
    ema_state = None
    if ema is not None and os.path.exists(path + '.pdema'):
        ema_state, model_state = read_state(path + '.pdparams'), read_state(path + '.pdema')
    else:
        model_state = read_state(path + '.pdparams')
    _fill_every_weight(model, model_state, '--resume {}: the checkpoint'.format(path))
    logger.info('Finish resuming model weights: {}'.format(path + '.pdparams'))

    optimizer_state = read_state(path + '.pdopt')
    last_epoch = optimizer_state.pop('last_epoch', 0)
    current = optimizer.state_dict()
    optimizer.set_state_dict(dict(current, **optimizer_state))
    if ema_state is not None:
        ema.resume(ema_state, optimizer_state['LR_Scheduler']['last_epoch'])
    return last_epoch


def _fill_every_weight(model, state, source):
    """Set every state-dict entry of ``model`` from ``state`` (cast to the model's dtypes).

    Raises:
        KeyError: ``state`` lacks some of the model's keys; the message starts with ``source`` (e.g.
            "weights x.pdparams: the file") and names the first five.
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        raise KeyError('{} lacks {} of the model\'s {} weights ({}{}): it was not written for this '
                       'config'.format(source, len(missing), len(own), ', '.join(missing[:5]),
                                       ', ...' if len(missing) > 5 else ''))
    model.set_dict({key: _as_dtype(state[key], value.dtype) for key, value in own.items()})


def _as_dtype(value, dtype):
    value = paddle.to_tensor(value) if not isinstance(value, paddle.Tensor) else value
    return value if value.dtype == dtype else value.astype(dtype)


def load_model_weights(model, weights):
    """Fills every weight of ``model`` from a ``.pdparams``, as ppdet's ``load_weight`` does for export.

    Args:
        model (paddle.nn.Layer): every one of its state-dict keys must be in the file.
        weights (str): a ``.pdparams`` path with or without the suffix, or a ppdet URL (downloaded).
    Raises:
        FileNotFoundError: no such ``.pdparams``.
        KeyError: naming the model keys the file lacks.
        safe_load.UnsafeWeightsError: the file's pickle is not only data (see ``read_state``).
    """
    if is_url(weights):
        weights = get_weights_path(weights)
    stem, ext = os.path.splitext(weights)
    path = (stem if ext in ('.pdparams', '.pdopt', '.pdema') else weights) + '.pdparams'
    if not os.path.isfile(path):
        raise FileNotFoundError('weights {}: {} does not exist'.format(weights, path))
    state = read_state(path)
    _fill_every_weight(model, state, 'weights {}: the file'.format(path))
    logger.info('Loaded the model weights from {}'.format(path))


# ppdet's COCO metric keys: 'mask' holds the segm AP
TARGET_METRICS = ('bbox', 'mask')


class AtomicCheckpointer(Checkpointer):
    """ppdet's ``Checkpointer`` callback whose saves go through ``save_model`` above.

    Saves what ppdet's saves for a detector: ``<epoch>`` every ``snapshot_epoch`` epochs, ``model_final``
    after the last one, and ``best_model`` when an evaluation (``--eval``) reaches the best AP so far: the bbox
    AP, or with ``target_metrics: mask`` (the official Mask-RT-DETR configs' key, which ppdet 2.6.0 ignores)
    the segm AP.
    With EMA the EMA weights are the ``.pdparams`` (the Trainer has swapped them into the model at epoch
    end) and the trained ones the ``.pdema``.
    """

    def __init__(self, model):
        super().__init__(model)
        self.target = model.cfg.get('target_metrics', 'bbox')
        if self.target not in TARGET_METRICS:
            raise ValueError('target_metrics: {!r} is not one of {} (the AP that chooses best_model)'.format(
                self.target, TARGET_METRICS))

    def on_epoch_end(self, status):
        if dist.get_world_size() > 1 and dist.get_rank() != 0:
            return
        save_name = self._save_name(status)
        if save_name is None:
            return
        weight = self.weight.state_dict()
        if self.model.use_ema:
            save_model(status['weight'], self.model.optimizer, self.save_dir, save_name, status['epoch_id'] + 1,
                       ema_model=weight)
        else:
            save_model(weight, self.model.optimizer, self.save_dir, save_name, status['epoch_id'] + 1)

    def _save_name(self, status):
        cfg, epoch = self.model.cfg, status['epoch_id']
        if status['mode'] == 'train':
            if epoch == cfg.epoch - 1:
                return 'model_final'
            return str(epoch) if (epoch + 1) % cfg.snapshot_epoch == 0 else None
        if status['mode'] != 'eval' or not status.get('save_best_model'):
            return None
        save_name = None
        for metric in self.model._metrics:
            results = metric.get_results()
            if self.target not in results:
                logger.warning('Evaluation results empty, this may be due to training iterations being too '
                               'few or not loading the correct weights.')
                return None
            if results[self.target][0] >= self.best_ap:
                self.best_ap = results[self.target][0]
                save_name = 'best_model'
            logger.info('Best test {} ap is {:0.3f}.'.format(self.target, abs(self.best_ap)))
        return save_name
