"""A checkpoint's manifest: its format, its epoch, and each file's size and sha256, written after the files.

``checkpoint.save_model`` writes a checkpoint ``<stem>`` (``3``, ``model_final``, ``best_model``) as data files
named by ``FILES`` for its format, then ``<stem>.manifest.json``, each through a fsynced temporary file and
an atomic rename; the manifest is last, so it describes files that are all in place::

    {"checkpoint_format": "pdparams", "last_epoch": 4,
     "files": {"weights": {"name": "3.pdparams", "size": 1234, "sha256": "..."}, "optimizer": {...}}}

Roles: ``weights`` (what ``weights:`` loads: the EMA weights when EMA is on), ``model`` (the trained weights
beside EMA ones), ``optimizer`` (with ``last_epoch``). Names are relative to the manifest's folder, so a
copied folder still verifies. ``last_epoch`` is the number of finished epochs, what a resume continues from.

A checkpoint without a manifest (written before manifests existed, or converted by hand) is a legacy one:
it is used as it is, without verification.
"""
import hashlib
import json
import os

__all__ = ['FILES', 'SUFFIX', 'DamagedCheckpointError', 'digest', 'file_stem', 'read', 'record', 'verify',
           'verify_file']

SUFFIX = '.manifest.json'
# checkpoint_format -> {role: file suffix}
FILES = {
    'pdparams': {'weights': '.pdparams', 'model': '.pdema', 'optimizer': '.pdopt'},
    'safetensors': {'weights': '.safetensors', 'model': '.ema.safetensors', 'optimizer': '.opt.safetensors'},
}
# longest first: '3.ema.safetensors' is checkpoint '3', not '3.ema'
_ALL_SUFFIXES = sorted({s for roles in FILES.values() for s in roles.values()} | {SUFFIX}, key=len, reverse=True)
_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A checkpoint file differs from its manifest (size or sha256), is missing, or the manifest is unreadable."""


def digest(path):
    """``{'size': bytes, 'sha256': hex}`` of the file at ``path`` (read in 1 MB chunks)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            sha.update(chunk)
            size += len(chunk)
    return {'size': size, 'sha256': sha.hexdigest()}


def record(checkpoint_format, last_epoch, digests):
    """The manifest (a dict for JSON) of a checkpoint whose files are ``{role: (path, digest(path))}``."""
    return {'checkpoint_format': checkpoint_format, 'last_epoch': int(last_epoch),
            'files': {role: dict(name=os.path.basename(path), **stats) for role, (path, stats) in digests.items()}}


def file_stem(path):
    """``(stem, suffix)`` of a checkpoint file path (``out/3.opt.safetensors`` -> ``('out/3', '.opt.safetensors')``);
    ``(path, '')`` for a path without one of the known suffixes."""
    for suffix in _ALL_SUFFIXES:
        if path.endswith(suffix) and len(path) > len(suffix):
            return path[:-len(suffix)], suffix
    return path, ''


def read(stem):
    """The manifest of checkpoint ``stem`` (a dict), or None when it has none (a legacy checkpoint).

    Raises:
        DamagedCheckpointError: the manifest is not JSON or lacks a field, naming it.
    """
    path = stem + SUFFIX
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            manifest = json.loads(f.read().decode('utf-8'))
        files = manifest['files']
        valid = (manifest['checkpoint_format'] in FILES and isinstance(manifest['last_epoch'], int)
                 and isinstance(files, dict) and {'weights', 'optimizer'} <= set(files) and all(
                     set(entry) == {'name', 'size', 'sha256'} and isinstance(entry['name'], str)
                     and os.path.basename(entry['name']) == entry['name'] for entry in files.values()))
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError('{}: not a readable checkpoint manifest ({}: {})'.format(
            path, type(e).__name__, e)) from None
    if not valid:
        raise DamagedCheckpointError('{}: not a checkpoint manifest (a field is missing or of another type)'.format(
            path))
    return manifest


def _check(folder, entry):
    path = os.path.join(folder, entry['name'])
    if not os.path.isfile(path):
        raise DamagedCheckpointError('{}: missing (the checkpoint manifest lists it)'.format(path))
    found = digest(path)
    if found['size'] != entry['size']:
        raise DamagedCheckpointError('{}: damaged: {} bytes, the checkpoint manifest recorded {}'.format(
            path, found['size'], entry['size']))
    if found['sha256'] != entry['sha256']:
        raise DamagedCheckpointError('{}: damaged: its sha256 differs from the one the checkpoint manifest '
                                     'recorded (same size: bytes were changed in place)'.format(path))


def verify(stem):
    """Checks every file of checkpoint ``stem`` against its manifest.

    Returns:
        dict|None: the manifest, or None when the checkpoint has none (nothing verified).
    Raises:
        DamagedCheckpointError: naming the first file that is missing or differs, or the unreadable manifest.
    """
    manifest = read(stem)
    if manifest is not None:
        for entry in manifest['files'].values():
            _check(os.path.dirname(stem), entry)
    return manifest


def verify_file(path):
    """Checks one checkpoint file against the manifest beside it, when that manifest lists it.

    Returns:
        bool: whether the file was verified (False: no manifest, or the manifest does not list this file).
    Raises:
        DamagedCheckpointError: the file differs from what the manifest recorded, naming it.
    """
    stem, suffix = file_stem(path)
    if not suffix or suffix == SUFFIX:
        return False
    manifest = read(stem)
    name = os.path.basename(path)
    entry = next((e for e in (manifest or {}).get('files', {}).values() if e['name'] == name), None)
    if entry is None:
        return False
    _check(os.path.dirname(path), entry)
    return True
