"""Read Paddle weights files (``.pdparams``, ``.pdopt``, ``.pdema``) without running code from them.

``paddle.load`` is ``pickle.load``: a pickle may name any importable callable (``os.system``,
``builtins.eval``, ``subprocess.Popen``) and pickle calls it while reading, before any check can look at the
result. ``load`` reads the same files with an unpickler that resolves only the globals ``paddle.save`` writes
for state dicts and optimizer states, and refuses every other one when the pickle names it, before it is
imported or called:

* ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray._reconstruct`` / ``scalar``,
  ``numpy.core.numeric._frombuffer`` (protocol 5), also under numpy 2's ``numpy._core`` names;
* ``builtins.tuple`` (Paddle's saved-tensor tuple ``(name, array)``), ``collections.OrderedDict``,
  ``builtins.set`` / ``complex``, and how protocols 0-2 write bytes: ``_codecs.encode`` for latin-1 only,
  ``builtins.bytes`` without arguments;
* ``builtins.eval`` only in the form Paddle pickles a ``DenseTensor``, ``eval('data', {'data': array})``:
  the stand-in returns the array and evaluates nothing; any other expression is refused.

Dicts, lists, strings, numbers and None are pickle opcodes, not globals. Everything then goes through the
same post-processing as ``paddle.load`` (Paddle 3.3.1's private helpers: big arrays split by protocol 2/3
are joined, arrays become ``paddle.Tensor``), so a genuine file loads exactly as ``paddle.load`` gives it.

The opt-out for a trusted legacy file that needs more: ``allow_unsafe_weights: true`` in the config (or the
tools' ``--allow_unsafe_weights``). The file is still read safely first; only if that refuses a global is it
handed to ``paddle.load``, with a warning naming the file and the global.
"""
import _compat_pickle
import argparse
import collections
import pickle

import numpy as np
import paddle
from paddle.framework.io import _ndarray_to_tensor, _pack_loaded_dict, _parse_load_result

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['CONFIG_KEY', 'UnsafeWeightsError', 'WeightsFileError', 'add_flag', 'load']

CONFIG_KEY = 'allow_unsafe_weights'
# paddle 2.0's paddle.save stores {structured key: parameter name} under this key; paddle.load drops it
_NAME_TABLE = 'StructuredToParameterName@@'


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weights file names a global that is not data; nothing of it ran. The message names file and global."""


class WeightsFileError(ValueError):
    """A weights file that is not a readable pickle (truncated, corrupt, another format); names the file."""


class _Refused(Exception):
    def __init__(self, name, why=''):
        super().__init__(name, why)
        self.name, self.why = name, why


def _reconstruct(*args):
    # how ndarray.__reduce__ starts an array; a subclass (np.memmap, np.ma.MaskedArray, ...) is not data
    if len(args) != 3 or args[0] is not np.ndarray:
        raise _Refused('numpy.core.multiarray._reconstruct', 'called for {!r}, not numpy.ndarray'.format(
            args[0] if args else None))
    return np.core.multiarray._reconstruct(*args)


def _latin1_encode(*args):
    # protocols 0-2 write bytes as _codecs.encode(str, 'latin1')
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ('latin1', 'latin-1'):
        raise _Refused('_codecs.encode', "called with other arguments than (str, 'latin1')")
    return args[0].encode('latin1')


def _bytes(*args):
    # protocols 0-2 write b'' as bytes(); bytes(n) would only allocate n zero bytes
    if args:
        raise _Refused('builtins.bytes', 'called with arguments')
    return b''


def _saved_dense_tensor(*args):
    # Paddle's reduce_DenseTensor pickles a DenseTensor as eval('data', {'data': array}): return the array
    if (len(args) == 2 and args[0] == 'data' and type(args[1]) is dict and list(args[1]) == ['data']
            and type(args[1]['data']) is np.ndarray):
        return args[1]['data']
    shown = repr(args[0])[:80] if args else 'nothing'
    raise _Refused('builtins.eval', "called with {} instead of Paddle's saved-tensor form eval('data', "
                   "{{'data': array}})".format(shown))


_SAFE = {
    ('builtins', 'tuple'): tuple,
    ('builtins', 'set'): set,
    ('builtins', 'complex'): complex,
    ('builtins', 'bytes'): _bytes,
    ('builtins', 'eval'): _saved_dense_tensor,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('_codecs', 'encode'): _latin1_encode,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}
for _core in ('numpy.core', 'numpy._core'):  # numpy 1.x and numpy 2 names of the same functions
    _SAFE[(_core + '.multiarray', '_reconstruct')] = _reconstruct
    _SAFE[(_core + '.multiarray', 'scalar')] = np.core.multiarray.scalar
    _SAFE[(_core + '.numeric', '_frombuffer')] = np.core.numeric._frombuffer


def _python3_name(module, name):
    """The name pickle itself resolves a protocol 0-2 global to (``__builtin__.tuple`` -> ``builtins.tuple``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _DataUnpickler(pickle.Unpickler):
    """C unpickler whose global lookups (GLOBAL, STACK_GLOBAL, INST; OBJ takes what those put on the stack) go
    through ``_SAFE``.

    Persistent ids are refused by pickle itself (no ``persistent_load``); out-of-band buffers (protocol 5)
    too, since ``load`` passes none; EXT codes resolve through ``find_class`` as well (Python registers none:
    an unregistered code is an error).
    """

    def find_class(self, module, name):
        resolved = _python3_name(module, name)
        if resolved in _SAFE:
            return _SAFE[resolved]
        written = '{}.{}'.format(module, name)
        full = '{}.{}'.format(*resolved)
        raise _Refused(full if full == written else '{} (written as {})'.format(full, written))


def _as_paddle_load_returns(obj):
    """What ``paddle.load`` (Paddle 3.3.1, ``return_numpy=False``) makes of the unpickled object."""
    if not isinstance(obj, dict):
        return _parse_load_result(obj, False)
    obj = _pack_loaded_dict(obj)
    if _NAME_TABLE not in obj:
        return _parse_load_result(obj, False)
    for key, name in obj.pop(_NAME_TABLE).items():
        if isinstance(obj[key], np.ndarray):
            obj[key] = _ndarray_to_tensor(obj[key], False)
            if getattr(obj[key], 'name', ''):
                obj[key].name = name
    return obj


def _allowed_by_config():
    from ppdet.core.workspace import global_config
    value = global_config.get(CONFIG_KEY, False)
    if not isinstance(value, bool):
        raise ValueError('{}: {!r} in the config is not true or false'.format(CONFIG_KEY, value))
    return value


def load(path, allow_unsafe=None):
    """``paddle.load(path)`` for a pickled weights file, refusing any pickle that is not data.

    Args:
        path (str): the file (``.pdparams``, ``.pdopt``, ``.pdema``).
        allow_unsafe (bool|None): hand a file that names other globals to ``paddle.load`` with a warning
            (trusted files only). None: as ``allow_unsafe_weights`` in ppdet's global config (default false).

    Returns:
        what ``paddle.load(path)`` returns: arrays as ``paddle.Tensor`` inside the saved dicts / lists.

    Raises:
        UnsafeWeightsError: the pickle names a global outside the list in the module docstring; the message
            names the file and the global (``module.name``). Nothing from the file was called.
        WeightsFileError: the file is missing, truncated or not a pickle.
    """
    if allow_unsafe is None:
        allow_unsafe = _allowed_by_config()
    try:
        with open(path, 'rb') as f:
            obj = _DataUnpickler(f, encoding='latin1').load()
        return _as_paddle_load_returns(obj)
    except _Refused as e:
        refused = e.name
        if not allow_unsafe:
            raise UnsafeWeightsError(
                '{}: refused to load: its pickle names the global {}{}. A weights file holds only data '
                '(arrays, dicts, lists, tuples, strings, numbers); nothing from this file was run. Only if you '
                'trust this file, set `{}: true` in the config or pass --{}.'.format(
                    path, e.name, ' ({})'.format(e.why) if e.why else '', CONFIG_KEY, CONFIG_KEY)) from None
    except OSError as e:
        raise WeightsFileError('{}: cannot read the weights file ({})'.format(path, e)) from e
    except Exception as e:
        raise WeightsFileError('{}: not a readable Paddle weights file, truncated or corrupt ({}: {})'.format(
            path, type(e).__name__, e)) from e
    logger.warning('{}: loading with unrestricted pickle because {} is set: the file names {}, which can run '
                   'any code. Do this only for a file you trust.'.format(path, CONFIG_KEY, refused))
    return paddle.load(path)


def add_flag(parser):
    """Adds ``--allow_unsafe_weights`` to a tool's parser; absent unless given, so the config key stays."""
    parser.add_argument('--' + CONFIG_KEY, action='store_true', default=argparse.SUPPRESS,
                        help='read weights files that name globals other than data with plain paddle.load '
                             '(runs their code: trusted files only); same as `{}: true`'.format(CONFIG_KEY))
