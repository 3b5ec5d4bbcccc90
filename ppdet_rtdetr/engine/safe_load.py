"""Read Paddle weights files (``.pdparams``, ``.pdopt``, ``.pdema``) without running anything from them.

``paddle.load`` is ``pickle.load``: a pickle may name any importable callable (``os.system``, ``eval``) and
pickle calls it while reading. Allowing only numpy's globals is not enough either: ``numpy.ndarray`` /
``numpy.dtype`` given values from the file (object or structured dtypes, ``buffer=``, dtype state with object
flags) hand out raw memory and arbitrary objects, crash the process or allocate gigabytes. ``load`` reads the
same files with ``weights_pickle``: every global the pickle names is a stand-in that accepts only the exact
form ``paddle.save`` writes, and numpy objects are made after unpickling (``weights_numpy``) from a dtype of a
fixed list of plain numeric ones (bool, int8-64, uint8-64, float16/32/64, complex64/128; Paddle saves
bfloat16 as uint16), a shape of non-negative ints and bytes of exactly ``prod(shape) * itemsize``:
``np.frombuffer(bytes).reshape(shape)``, a view of the bytes the pickle holds (Fortran order as numpy pickles
it); no numpy constructor sees any other value from the file. BUILD on anything but those arrays and dtypes,
object / structured / sub-array / big-endian dtypes, ``numpy.ndarray`` called directly, other globals and
opcodes, containers nested deeper than 100 levels: refused, naming the file and what was found.
No read asks for more bytes than the file has left, so the array data is bounded by the file's size.

Then the result goes through ``paddle.load``'s post-processing (Paddle 3.3.1's ``_parse_load_result``: arrays
become ``paddle.Tensor``; the ``StructuredToParameterName@@`` name table of paddle 2.0 state dicts names
them), except that arrays split by ``paddle.save`` at protocol 2/3 (``UnpackBigParamInfor@@``) are joined
here with checks: every part exists, is 1-D, has the dtype of the others and is used once, and the parts'
sizes sum to the declared shape's. Arrays that stay numpy are copied (``paddle.load`` gives writable ones);
a genuine file loads equal to ``paddle.load``: same keys and order, types, names, dtypes and bytes.

The opt-out for a trusted legacy file that needs more: ``allow_unsafe_weights: true`` in the config (or the
tools' ``--allow_unsafe_weights``). The file is still read safely first; only if that refuses it is it
handed to ``paddle.load``, with a warning naming the file and what was refused.
"""
import argparse
import io
import math
import os
import pickle

import numpy as np
import paddle
from paddle.framework.io import _ndarray_to_tensor, _parse_load_result

from ppdet.utils.logger import setup_logger

from . import weights_pickle

logger = setup_logger(__name__)

__all__ = ['CONFIG_KEY', 'UnsafeWeightsError', 'WeightsFileError', 'add_flag', 'load', 'loads']

CONFIG_KEY = 'allow_unsafe_weights'
# paddle 2.0's paddle.save stores {structured key: parameter name} under this key; paddle.load drops it
_NAME_TABLE = 'StructuredToParameterName@@'


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weights file whose pickle is not data in paddle.save's forms; nothing of it ran. The message names the
    file and what was found."""


class WeightsFileError(ValueError):
    """A weights file that is not a readable pickle (truncated, corrupt, another format); names the file."""


_SPLIT_TABLE = 'UnpackBigParamInfor@@'


def _join_split_arrays(obj):
    """Paddle's ``_pack_loaded_dict`` with checks: joins the arrays paddle.save (protocol 2/3) split into
    1-D parts ``{key}@@.{i}`` listed as ``{key: {'OriginShape': shape, 'slices': [part names]}}`` under
    ``UnpackBigParamInfor@@``, appends each joined array at the end of `obj` and removes the parts and the
    table, as paddle.load does. Each part is used once, so the joined arrays are no larger than the parts."""
    table = obj.pop(_SPLIT_TABLE)
    if type(table) is not dict:
        raise weights_pickle.Refused('holds {} {}, not a dict'.format(_SPLIT_TABLE, type(table).__name__))
    used = []
    for key, entry in table.items():
        where = '{}[{!r}]'.format(_SPLIT_TABLE, key)
        if type(entry) is not dict or sorted(entry) != ['OriginShape', 'slices'] or type(entry['slices']) is not list:
            raise weights_pickle.Refused("holds {} that is not {{'OriginShape': shape, 'slices': [names]}}".format(
                where))
        shape, parts = entry['OriginShape'], entry['slices']
        if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape) or key in obj or not parts:
            raise weights_pickle.Refused('holds {} with the shape {!r} for {} parts{}'.format(
                where, shape, len(parts), ', and the file also holds that key whole' if key in obj else ''))
        arrays = []
        for part in parts:
            if type(part) is not str or part not in obj or part in used:
                raise weights_pickle.Refused('holds {} whose part {!r} {}'.format(
                    where, part, 'is used twice' if part in used else 'is not in the file'))
            used.append(part)
            arrays.append(obj[part])
            if type(arrays[-1]) is not np.ndarray or arrays[-1].ndim != 1 or arrays[-1].dtype != arrays[0].dtype:
                raise weights_pickle.Refused('holds {} whose part {!r} is not a 1-D array of dtype {}'.format(
                    where, part, arrays[0].dtype))
        if sum(a.size for a in arrays) != math.prod(shape):
            raise weights_pickle.Refused('holds {} whose parts have {} elements for the shape {}'.format(
                where, sum(a.size for a in arrays), shape))
        obj[key] = np.concatenate(arrays).reshape(shape)  # [sum of the parts] -> OriginShape
    for part in used:
        del obj[part]
    return obj


def _as_paddle_load_returns(obj):
    """What ``paddle.load`` (Paddle 3.3.1, ``return_numpy=False``) makes of the unpickled object."""
    if not isinstance(obj, dict):
        return _parse_load_result(obj, False)
    if _SPLIT_TABLE in obj:
        obj = _join_split_arrays(obj)
    if _NAME_TABLE not in obj:
        return _parse_load_result(obj, False)
    for key, name in obj.pop(_NAME_TABLE).items():
        if isinstance(obj[key], np.ndarray):
            obj[key] = _ndarray_to_tensor(obj[key], False)
            if getattr(obj[key], 'name', ''):
                obj[key].name = name
    return obj


def _writable(obj):
    """`obj` with the numpy arrays it still holds copied: they are views of the pickle's (immutable) bytes,
    where paddle.load gives writable arrays. Only arrays that did not become Tensors are copied."""
    if type(obj) is np.ndarray:
        return obj if obj.flags.writeable else obj.copy(order='K')
    if type(obj) is tuple:
        return tuple(_writable(v) for v in obj)
    if isinstance(obj, (dict, list)):
        for key in (range(len(obj)) if isinstance(obj, list) else list(obj)):
            obj[key] = _writable(obj[key])
    return obj


def _allowed_by_config():
    from ppdet.core.workspace import global_config
    value = global_config.get(CONFIG_KEY, False)
    if not isinstance(value, bool):
        raise ValueError('{}: {!r} in the config is not true or false'.format(CONFIG_KEY, value))
    return value


def _read(name, open_file, size_of, allow_unsafe, unrestricted):
    if allow_unsafe is None:
        allow_unsafe = _allowed_by_config()
    try:
        with open_file() as f:
            obj = weights_pickle.load(f, size_of(f))
        return _writable(_as_paddle_load_returns(obj))
    except weights_pickle.Refused as e:
        found = e.found
        if not allow_unsafe:
            raise UnsafeWeightsError(
                '{}: refused to load: its pickle {}. A weights file holds only data (arrays of plain numeric '
                'dtypes, dicts, lists, tuples, strings, numbers) in the forms paddle.save writes; nothing from '
                'this file was run. Only if you trust this file, set `{}: true` in the config or pass --{}.'.format(
                    name, found, CONFIG_KEY, CONFIG_KEY)) from None
    except OSError as e:
        raise WeightsFileError('{}: cannot read the weights file ({})'.format(name, e)) from e
    except Exception as e:  # weights_pickle.Corrupt, and the unpickler's own errors on a malformed pickle
        raise WeightsFileError('{}: not a readable Paddle weights file, truncated or corrupt ({}: {})'.format(
            name, type(e).__name__, e)) from e
    logger.warning('{}: loading with unrestricted pickle because {} is set, although its pickle {}: paddle.load '
                   'can run any code. Do this only for a file you trust.'.format(name, CONFIG_KEY, found))
    return unrestricted()


def load(path, allow_unsafe=None):
    """``paddle.load(path)`` for a pickled weights file, refusing any pickle that is not data.

    Args:
        path (str): the file (``.pdparams``, ``.pdopt``, ``.pdema``).
        allow_unsafe (bool|None): hand a file that is refused to ``paddle.load`` with a warning (trusted
            files only). None: as ``allow_unsafe_weights`` in ppdet's global config (default false).

    Returns:
        what ``paddle.load(path)`` returns: arrays as ``paddle.Tensor`` inside the saved dicts / lists.

    Raises:
        UnsafeWeightsError: the pickle is not data in paddle.save's forms (module docstring); the message
            names the file and what was found (``names the global os.system``, ...). Nothing of it ran.
        WeightsFileError: the file is missing, truncated or not a pickle.
    """
    return _read(path, lambda: open(path, 'rb'), lambda f: os.fstat(f.fileno()).st_size, allow_unsafe,
                 lambda: paddle.load(path))


def loads(data, name='<bytes>', allow_unsafe=None):
    """`load` for a weights file held in memory (`data`: bytes); `name` stands for the file in messages."""
    return _read(name, lambda: io.BytesIO(data), lambda f: len(data), allow_unsafe,
                 lambda: paddle.load(io.BytesIO(data)))


def add_flag(parser):
    """Adds ``--allow_unsafe_weights`` to a tool's parser; absent unless given, so the config key stays."""
    parser.add_argument('--' + CONFIG_KEY, action='store_true', default=argparse.SUPPRESS,
                        help='read weights files that name globals other than data with plain paddle.load '
                             '(runs their code: trusted files only); same as `{}: true`'.format(CONFIG_KEY))
