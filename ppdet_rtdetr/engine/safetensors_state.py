"""State dicts and optimizer states as ``.safetensors`` files: the format to share weights in.

A safetensors file is a JSON header (names, dtypes, shapes, byte offsets, and a ``{str: str}`` metadata table)
followed by raw tensor bytes; reading it parses the header and copies bytes, so no content of the file is
ever run. ``load`` reads with safetensors' own Paddle loader (bfloat16 / float16 stay what they were).

What ``paddle.save`` writes beyond tensors goes into the metadata as JSON, under ``TREE_KEY``, so that
``load`` gives back what ``paddle.load`` gives for the ``.pdparams`` / ``.pdema`` / ``.pdopt`` holding the same
state:

* the order of the entries, and each tensor's Paddle name (``paddle.save`` writes it too: with it a
  ``.pdparams -> .safetensors -> .pdparams`` round trip is byte-equal);
* nested dicts / lists / tuples, and the optimizer's non-tensor values (``last_epoch``, the ``LR_Scheduler``
  dict, ...) with their types: int, float (exact: JSON keeps the shortest round-trip repr), bool, str, None,
  NumPy scalars; ``numpy.ndarray`` leaves come back as ``numpy.ndarray``.

Each tensor is stored under its key path joined by ``/`` (top-level weights under their own names: any
safetensors reader sees a plain ``{name: tensor}`` file). A file without ``TREE_KEY`` (written elsewhere) loads
as ``{name: paddle.Tensor}`` in the file's order.
"""
import json
import sys

import numpy as np
import paddle
from safetensors import SafetensorError, safe_open
from safetensors.paddle import save_file

from .safe_load import WeightsFileError

__all__ = ['SUFFIX', 'TREE_KEY', 'load', 'save']

SUFFIX = '.safetensors'
TREE_KEY = 'ppdet_rtdetr.tree'
_MAX_DEPTH = 16  # an optimizer state nests 3 deep; a deeper tree in a file is not one of ours
_SCALARS = (bool, int, float, str, type(None))
# the NumPy scalar types a state may hold, by dtype string: a file's string is looked up here, never parsed by numpy
_NUMPY_SCALARS = {np.dtype(t).str: t for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                               np.uint32, np.uint64, np.float16, np.float32, np.float64)}


def _encode(value, path, tensors, depth):
    """The JSON node of ``value``; its tensors are added to ``tensors`` ({storage key: paddle.Tensor})."""
    if depth > _MAX_DEPTH:
        raise ValueError('{}: nested deeper than {} levels'.format('/'.join(path), _MAX_DEPTH))
    if isinstance(value, (paddle.Tensor, np.ndarray)):
        key = '/'.join(path)
        if key in tensors:
            raise ValueError('two entries are stored under the same name {!r}'.format(key))
        is_array = isinstance(value, np.ndarray)
        tensors[key] = paddle.to_tensor(value) if is_array else value.contiguous()
        node = {'tensor': key, 'numpy': True} if is_array else {'tensor': key, 'name': value.name}
        return node
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ValueError('{}: key {!r} is not a str or int'.format('/'.join(path) or 'the state', k))
        return {'dict': [[k, _encode(v, path + [str(k)], tensors, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, path + [str(i)], tensors, depth + 1) for i, v in enumerate(value)]
        return {'tuple' if isinstance(value, tuple) else 'list': items}
    if isinstance(value, np.generic) and value.dtype.str in _NUMPY_SCALARS:
        return {'numpy_scalar': value.dtype.str, 'value': value.item()}
    if isinstance(value, _SCALARS):
        return {'value': value}
    raise ValueError('{}: a {} cannot be stored in a safetensors file'.format(
        '/'.join(path) or 'the state', type(value).__name__))


def save(state, path):
    """Writes ``state`` (what ``paddle.save`` would get: a state dict or an optimizer state) to ``path``.

    Args:
        state (dict): str (or int) keys; values tensors, arrays, nested dicts / lists / tuples, or scalars.
        path (str): the file to write (any name; ``checkpoint`` gives it the ``.safetensors`` suffix).
    Raises:
        ValueError: a value that is neither a tensor nor one of the scalars above, naming its key path.
    """
    if not isinstance(state, dict):
        raise ValueError('{}: only a dict can be saved as safetensors, not a {}'.format(path, type(state).__name__))
    tensors = {}
    tree = _encode(state, [], tensors, 0)
    save_file(tensors, path, metadata={TREE_KEY: json.dumps(tree, allow_nan=True)})


class _Decoder(object):
    """Rebuilds the saved object from a tree node, taking each tensor of the file at most once."""

    def __init__(self, path, handle):
        self.path, self.handle, self.unused = path, handle, set(handle.keys())

    def error(self, why):
        return WeightsFileError('{}: not a valid {} entry in the safetensors metadata ({})'.format(
            self.path, TREE_KEY, why))

    def node(self, node, depth):
        if depth > _MAX_DEPTH:
            raise self.error('nested deeper than {} levels'.format(_MAX_DEPTH))
        if not isinstance(node, dict) or len(node) > 3:
            raise self.error('node {!r}'.format(node)[:200])
        if 'tensor' in node:
            return self.tensor(node)
        if set(node) == {'dict'} and isinstance(node['dict'], list):
            pairs = node['dict']
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in pairs):
                raise self.error('dict entries are not [key, node] pairs')
            # interned keys: pickle then memoizes a key repeated in nested dicts as paddle.save's original did
            return {sys.intern(k) if isinstance(k, str) else k: self.node(v, depth + 1) for k, v in pairs}
        for kind, build in (('list', list), ('tuple', tuple)):
            if set(node) == {kind} and isinstance(node[kind], list):
                return build(self.node(v, depth + 1) for v in node[kind])
        if set(node) == {'value'} and isinstance(node['value'], _SCALARS):
            return node['value']
        if set(node) == {'numpy_scalar', 'value'}:
            return self.numpy_scalar(node['numpy_scalar'], node['value'])
        raise self.error('node {!r}'.format(node)[:200])

    def tensor(self, node):
        key = node['tensor']
        if not isinstance(key, str) or key not in self.unused:
            raise self.error('tensor {!r} is not in the file, or is used twice'.format(key))
        self.unused.discard(key)
        value = self.handle.get_tensor(key)
        if node.get('numpy'):
            return value.numpy()
        if isinstance(node.get('name'), str):
            value.name = node['name']
        return value

    def numpy_scalar(self, dtype, value):
        if not isinstance(dtype, str) or dtype not in _NUMPY_SCALARS or not isinstance(value, (bool, int, float)):
            raise self.error('numpy scalar {!r} of dtype {!r}'.format(value, dtype)[:200])
        scalar = _NUMPY_SCALARS[dtype](value)
        if scalar.item() != value and value == value:  # NaN is never equal to itself
            raise self.error('{!r} does not fit {}'.format(value, dtype))  # numpy 1.x would wrap it around
        return scalar


def load(path):
    """What ``save`` wrote to ``path`` (arrays as ``paddle.Tensor``); a foreign file as ``{name: paddle.Tensor}``.

    Raises:
        WeightsFileError: the file is missing, truncated, not safetensors, or its ``TREE_KEY`` metadata is not
            one ``save`` writes (names the file).
    """
    try:
        with safe_open(path, framework='paddle') as handle:
            tree = (handle.metadata() or {}).get(TREE_KEY)
            if tree is None:
                return {key: handle.get_tensor(key) for key in handle.keys()}
            try:
                tree = json.loads(tree)
            except (ValueError, RecursionError) as e:  # json's own nesting limit
                raise WeightsFileError('{}: the {} metadata is not JSON ({}: {})'.format(
                    path, TREE_KEY, type(e).__name__, e)) from None
            return _Decoder(path, handle).node(tree, 0)
    except (SafetensorError, OSError) as e:
        raise WeightsFileError('{}: not a readable safetensors file, truncated or corrupt ({}: {})'.format(
            path, type(e).__name__, e)) from e
