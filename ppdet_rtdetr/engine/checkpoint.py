"""Checkpoints you can trust: atomic writes, a manifest of digests, resuming from the highest complete epoch.

What ``RTDETRTrainer`` (``ppdet_rtdetr.engine.trainer``) saves and resumes with; ppdet's own Trainer is left
as it is.

ppdet 2.6.0's ``save_model`` writes ``<name>.pdparams`` (+ ``.pdema``) and ``<name>.pdopt`` in place: a
run killed while saving (preemption, out of disk, OOM killer) leaves truncated files under the final name,
and ``--resume`` then fails to unpickle them or, when ``.pdopt`` is missing, silently restarts at epoch 0.

``save_model`` here has ppdet's signature (plus ``checkpoint_format``). It writes every file of a checkpoint
to a temporary file in the same folder, fsyncs it and hashes it (sha256, read back once from the page
cache), and only then renames the files into place with ``os.replace`` (atomic on POSIX), the optimizer
state last; then it writes ``<name>.manifest.json`` the same way (``manifest``: format, ``last_epoch``, each
file's name, size and sha256). A file under a checkpoint's final name is therefore always complete; a crash
before the renames leaves the previous checkpoints as they were (plus a hidden ``.<name>.*.tmp`` file, which
nothing reads). ``checkpoint_format``: ``pdparams`` (ppdet's files) or ``safetensors`` (``manifest.FILES``).

``resume_path`` is what ``RTDETRTrainer.resume_weights`` resolves ``--resume`` with: a checkpoint (verified
against its manifest: a damaged file is an error naming it), or a folder, meaning its complete checkpoint
with the highest recorded epoch that verifies (a damaged one is skipped with a warning naming it);
``load_checkpoint`` then reads it. Every weights file the trainer reads (here and in ``pretrain``) goes
through ``read_state``: ``.safetensors`` through ``safetensors_state``, pickles through ``safe_load.load`` (a
pickle that is not only data is refused before anything of it runs), checked against a manifest listing it.
"""
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import paddle

from ppdet.utils.checkpoint import is_url
from ppdet.utils.download import get_weights_path
from ppdet.utils.logger import setup_logger

from . import manifest, safe_load, safetensors_state, stop_signals
from .manifest import DamagedCheckpointError

logger = setup_logger(__name__)

__all__ = ['CONFIG_KEY', 'DamagedCheckpointError', 'IncompleteCheckpointError',
           'check_format', 'load_checkpoint', 'load_model_weights', 'read_state', 'resume_path', 'save_atomic',
           'save_model', 'weights_file']

CONFIG_KEY = 'checkpoint_format'
DEFAULT_FORMAT = 'pdparams'


class IncompleteCheckpointError(FileNotFoundError):
    """--resume names a checkpoint without its optimizer state, or a folder without any checkpoint."""


def check_format(value):
    """Raises ValueError naming ``checkpoint_format`` and ``value`` unless it is one of ``manifest.FILES``."""
    if value not in manifest.FILES:
        raise ValueError('{}: {!r} is not a checkpoint format; use one of {}'.format(
            CONFIG_KEY, value, ', '.join(sorted(manifest.FILES))))


def read_state(path):
    """The object saved in ``path`` (a ``.pdparams`` / ``.pdopt`` / ``.pdema`` / ``.safetensors`` file): the one
    weights reader.

    ``.safetensors``: ``safetensors_state.load``. Otherwise ``safe_load.load``: what ``paddle.load`` gives for a
    genuine file; a pickle that names anything but data (``os.system``, ...) raises
    ``safe_load.UnsafeWeightsError`` naming the file and the global, nothing of it run
    (``allow_unsafe_weights: true`` hands a trusted file to ``paddle.load``, with a warning). When the
    checkpoint manifest beside the file lists it, the file is verified first.

    Raises:
        DamagedCheckpointError: the file differs from its manifest's record (names the file).
    """
    manifest.verify_file(path)
    return _read_unverified(path)


def _read_unverified(path):
    if path.endswith(safetensors_state.SUFFIX):
        return safetensors_state.load(path)
    return safe_load.load(path)


def _write(obj, temp, path):
    """Writes ``obj`` to ``temp`` in the format of ``path``'s suffix."""
    if path.endswith(safetensors_state.SUFFIX):
        safetensors_state.save(obj, temp)
    elif path.endswith('.json'):
        with open(temp, 'w') as f:
            json.dump(obj, f, indent=1)
    else:
        paddle.save(obj, temp)


# '.<file name>.<12 hex>.tmp': a fresh name rather than mkstemp, so the writer creates the file with the umask's
# mode, not 0600; run_folder removes such files that a killed run left
TEMP_NAME = re.compile(r'^\..+\.[0-9a-f]{12}\.tmp$')


def temp_path(path):
    """A new hidden temporary name beside ``path`` (matching ``TEMP_NAME``)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, '.{}.{}.tmp'.format(name, uuid.uuid4().hex[:12]))


def _write_temp(obj, path):
    """Writes ``obj`` into a fsynced temporary file beside ``path``; returns the temporary path."""
    temp = temp_path(path)
    try:
        _write(obj, temp, path)
        with open(temp, 'rb+') as f:
            os.fsync(f.fileno())
        return temp
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def _fsync_dir(folder):
    # makes the renames themselves durable; directories cannot be opened for fsync on Windows
    if os.name == 'posix':
        fd = os.open(folder or '.', os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_atomic(files):
    """Writes ``{path: object}`` so that each path holds either its old or its new file.

    The writer goes by the path's suffix: ``.safetensors`` ``safetensors_state.save``, ``.json`` JSON, else
    ``paddle.save``. All objects are written, fsynced and hashed into temporary files first; the renames
    follow in the given order. On any error the temporary files are removed and the error is raised.
    Each file is hashed once, read back from the page cache by a thread while the next one is written
    (hashlib releases the GIL); the measured cost is in docs/weights.md.

    Returns:
        dict: ``{path: {'size': bytes, 'sha256': hex}}`` of the files written.
    """
    temps, hashing = {}, {}
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # leaving it waits for every hash, also on an error
            for path, obj in files.items():
                temps[path] = _write_temp(obj, path)
                hashing[path] = pool.submit(manifest.digest, temps[path])
        digests = {path: future.result() for path, future in hashing.items()}
        for path, temp in list(temps.items()):
            os.replace(temp, path)
            del temps[path]
    finally:
        for temp in temps.values():
            os.remove(temp)
    _fsync_dir(os.path.dirname(next(iter(files))))
    return digests


@stop_signals.deferring  # SIGTERM / SIGINT wait for the save to finish (RTDETRTrainer.train)
def save_model(model, optimizer, save_dir, save_name, last_epoch, ema_model=None, checkpoint_format=DEFAULT_FORMAT):
    """ppdet's ``save_model``, written atomically with a manifest (see the module docstring).

    Args:
        model (dict): the model state dict.
        optimizer (paddle.optimizer.Optimizer): its state is saved with ``last_epoch``.
        save_dir (str): folder, created if needed.
        save_name (str): file stem, e.g. ``'3'`` or ``'model_final'``.
        last_epoch (int): the number of finished epochs (what ``--resume`` continues from).
        ema_model (dict|None): EMA weights; saved as the weights file with ``model`` as the ``model`` file
            (``.pdema`` / ``.ema.safetensors``), as ppdet.
        checkpoint_format (str): ``'pdparams'`` or ``'safetensors'`` (``manifest.FILES``).
    Raises:
        ValueError: another ``checkpoint_format``.
    """
    check_format(checkpoint_format)
    if paddle.distributed.get_rank() != 0:
        return
    os.makedirs(save_dir, exist_ok=True)
    stem = os.path.join(save_dir, save_name)
    names = {role: stem + suffix for role, suffix in manifest.FILES[checkpoint_format].items()}
    objects = {'weights': model if ema_model is None else ema_model}
    if ema_model is not None:
        objects['model'] = model
    state = optimizer.state_dict()
    state['last_epoch'] = last_epoch
    objects['optimizer'] = state  # last of the data files
    digests = save_atomic({names[role]: obj for role, obj in objects.items()})
    record = manifest.record(checkpoint_format, last_epoch, {role: (names[role], digests[names[role]])
                                                             for role in objects})
    save_atomic({stem + manifest.SUFFIX: record})  # last: a checkpoint with a manifest has all its files
    logger.info('Save checkpoint: {}'.format(save_dir))


def _legacy_format(stem):
    """The format whose weights and optimizer files both exist for ``stem`` (pdparams first), else None."""
    for name, roles in manifest.FILES.items():
        if os.path.isfile(stem + roles['weights']) and os.path.isfile(stem + roles['optimizer']):
            return name
    return None


def _recorded_epoch(stem):
    """The last_epoch of a checkpoint, for ordering a folder: the manifest's, or for a legacy one the name's
    (``N`` is saved after epoch N, as N + 1 finished epochs) or, for ``model_final``, the one in its optimizer
    file (None, with a warning, when that file cannot be read). A damaged manifest orders by name
    (``model_final`` first): verifying it then fails, naming it."""
    name = os.path.basename(stem)
    try:
        record = manifest.read(stem)
    except DamagedCheckpointError:
        record = None
    if record is not None:
        return record['last_epoch']
    if name.isdigit():
        return int(name) + 1
    legacy = _legacy_format(stem)
    if legacy is None:
        return float('inf')
    try:
        return int(read_state(stem + manifest.FILES[legacy]['optimizer']).get('last_epoch', 0))
    except (ValueError, safe_load.UnsafeWeightsError) as e:  # WeightsFileError is a ValueError
        logger.warning('skipping checkpoint {}: its epoch cannot be read ({})'.format(stem, e))
        return None


def _candidates(folder):
    """The stems of ``N`` / ``model_final`` checkpoints in ``folder`` with a manifest or a legacy file pair."""
    stems = set()
    for f in os.listdir(folder):
        stem, suffix = manifest.file_stem(f)
        if suffix and (stem.isdigit() or stem == 'model_final'):
            stems.add(os.path.join(folder, stem))
    return [s for s in stems if os.path.isfile(s + manifest.SUFFIX) or _legacy_format(s)]


def _no_digest(stem, quiet):
    if not quiet:
        logger.info('{}: no digest was recorded (a checkpoint written before manifests), so it is used '
                'unverified'.format(stem))


def _resume_from_folder(folder, quiet):
    epochs = [(_recorded_epoch(s), os.path.basename(s) == 'model_final', s) for s in _candidates(folder)]
    ordered = sorted((e for e in epochs if e[0] is not None), reverse=True)
    if not ordered:
        raise IncompleteCheckpointError('--resume {}: no complete checkpoint (N.pdparams with N.pdopt, '
                                        'N.safetensors with N.opt.safetensors, or model_final) in this '
                                        'folder'.format(folder))
    damaged = []
    for epoch, _, stem in ordered:
        try:
            if manifest.verify(stem) is None:
                _no_digest(stem, quiet)
        except DamagedCheckpointError as e:
            logger.warning('--resume {}: skipping checkpoint {}: {}'.format(folder, stem, e))
            damaged.append(str(e))
            continue
        if not quiet:
            logger.info('Resuming from {}, the complete checkpoint with the highest recorded epoch ({}) in {}{}'.format(
                stem, epoch, folder, ' (skipped damaged: {})'.format('; '.join(damaged)) if damaged else ''))
        return stem
    raise DamagedCheckpointError('--resume {}: every checkpoint is damaged: {}'.format(folder, '; '.join(damaged)))


def resume_path(path, quiet=False):
    """The checkpoint ``--resume path`` continues from.

    Args:
        path (str): a checkpoint (with or without one of its suffixes), or a folder of checkpoints.
        quiet (bool): no info lines (which checkpoint, no digest recorded); warnings about damaged
            checkpoints stay. For naming the last complete checkpoint without resuming.

    Returns:
        str: the checkpoint path without suffix. For a folder, the complete checkpoint (``N`` or
        ``model_final``: a manifest, or a legacy weights + optimizer pair) with the highest recorded epoch
        (manifest's ``last_epoch``, not file times) that verifies; a damaged one is skipped with a warning
        naming its file. ``best_model`` is not a resume point: its weights may be EMA ones.

    Raises:
        IncompleteCheckpointError: if the checkpoint lacks its weights or optimizer file, or the folder holds
            no complete checkpoint.
        DamagedCheckpointError: the named checkpoint (or every one in the folder) differs from its manifest;
            names the file. A checkpoint named explicitly is never replaced by another one.
    """
    if os.path.isdir(path):
        return _resume_from_folder(path, quiet)
    stem = manifest.file_stem(path)[0]
    if manifest.verify(stem) is not None:
        return stem
    if _legacy_format(stem) is None:
        # without the optimizer state ppdet's load_weight would restart at epoch 0 with a fresh optimizer
        st = manifest.FILES['safetensors']
        roles = st if any(os.path.isfile(stem + s) for s in st.values()) else manifest.FILES['pdparams']
        absent = [stem + roles[r] for r in ('weights', 'optimizer') if not os.path.isfile(stem + roles[r])]
        raise IncompleteCheckpointError('--resume {}: {} missing, so the checkpoint is incomplete. Resume '
                                        'from its folder to take the newest complete checkpoint.'.format(
                                            path, ' and '.join(absent)))
    _no_digest(stem, quiet)
    return stem


def _checkpoint_files(stem):
    """{role: path} of checkpoint ``stem``: from its manifest, else the legacy pair (and its model file)."""
    record = manifest.read(stem)
    if record is not None:
        return {role: os.path.join(os.path.dirname(stem), e['name']) for role, e in record['files'].items()}
    roles = manifest.FILES[_legacy_format(stem) or DEFAULT_FORMAT]
    return {role: stem + suffix for role, suffix in roles.items() if os.path.isfile(stem + suffix)}


def load_checkpoint(model, path, optimizer, ema=None, verify=True):
    """Restores a training checkpoint written by ``save_model``, as ppdet's ``load_weight`` does for resuming.

    Args:
        model (paddle.nn.Layer): every one of its state-dict keys must be in the checkpoint.
        path (str): checkpoint path without suffix (``resume_path`` gives it), in either format.
        optimizer (paddle.optimizer.Optimizer): gets the optimizer state (keys it lacks keep their values).
        ema (ppdet.optimizer.ModelEMA|None): with a ``model`` file (``.pdema`` / ``.ema.safetensors``), the EMA
            weights are the weights file and the model's the ``model`` file (``save_model`` exchanges them);
            the EMA step is the scheduler's step.
        verify (bool): check the files against the manifest first; False when ``resume_path`` just did
            (hashing twice would read every file once more: about a second for R50vd).
    Returns:
        int: the number of finished epochs (``last_epoch`` of the optimizer state), where training continues.
    Raises:
        KeyError: naming the model keys the checkpoint lacks (another architecture or config).
        DamagedCheckpointError: a file differs from the manifest (with ``verify``).
    """
    if verify:
        manifest.verify(path)
    files = _checkpoint_files(path)
    ema_state = None
    if ema is not None and 'model' in files:
        ema_state, model_state = _read_unverified(files['weights']), _read_unverified(files['model'])
    else:
        model_state = _read_unverified(files['weights'])
    _fill_every_weight(model, model_state, '--resume {}: the checkpoint'.format(path))
    logger.info('Finish resuming model weights: {}'.format(files['weights']))

    optimizer_state = _read_unverified(files['optimizer'])
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


def weights_file(weights):
    """The file that ``weights`` (a ``weights:`` / ``pretrain_weights:`` value) names, or None if there is none.

    A ``.safetensors`` or ``.pdparams`` path is itself; another checkpoint suffix (``.pdopt``, ``.pdema``,
    ``.pdmodel``, ``.manifest.json``, ...) or none names a checkpoint: its manifest's weights file, else
    ``<stem>.pdparams``, else ``<stem>.safetensors``.
    """
    if weights.endswith((safetensors_state.SUFFIX, '.pdparams')) and not weights.endswith(
            ('.ema.safetensors', '.opt.safetensors')):
        return weights if os.path.isfile(weights) else None
    stem = manifest.file_stem(weights[:-len('.pdmodel')] if weights.endswith('.pdmodel') else weights)[0]
    try:
        record = manifest.read(stem)
    except DamagedCheckpointError:
        record = None  # verify_file reports it when the file is read
    if record is not None:
        return os.path.join(os.path.dirname(stem), record['files']['weights']['name'])
    return next((stem + s for s in ('.pdparams', safetensors_state.SUFFIX) if os.path.isfile(stem + s)), None)


def load_model_weights(model, weights):
    """Fills every weight of ``model`` from a weights file, as ppdet's ``load_weight`` does for export.

    Args:
        model (paddle.nn.Layer): every one of its state-dict keys must be in the file.
        weights (str): a ``.pdparams`` / ``.safetensors`` path, a checkpoint path without suffix
            (``weights_file``), or a ppdet URL (downloaded).
    Raises:
        FileNotFoundError: no such weights file.
        KeyError: naming the model keys the file lacks.
        safe_load.UnsafeWeightsError: the file's pickle is not only data (see ``read_state``).
        DamagedCheckpointError: the file differs from its checkpoint manifest.
    """
    if is_url(weights):
        weights = get_weights_path(weights)
    path = weights_file(weights)
    if path is None:
        raise FileNotFoundError('weights {}: neither {} nor a .pdparams / .safetensors file of that checkpoint '
                                'exists'.format(weights, weights))
    state = read_state(path)
    _fill_every_weight(model, state, 'weights {}: the file'.format(path))
    logger.info('Loaded the model weights from {}'.format(path))
