"""The numpy objects of a weights pickle, as placeholders checked against numpy's own pickled forms.

``weights_pickle``'s stand-ins return placeholders instead of calling numpy: `Dtype` (a code of ``DTYPES``,
then its state), `Array` (then ``(1, shape, dtype, is_fortran, bytes)``, or ``_frombuffer``'s arguments),
`Scalar` (a dtype and itemsize bytes). Each checks its part when it is given: a dtype of the fixed list of
plain numeric ones (Paddle saves bfloat16 as uint16) in numpy's plain state only (byte order '<' or '|',
no sub-array, names, fields, flags), a shape of at most 32 non-negative ints, bytes of exactly
``prod(shape) * itemsize``. `to_data` walks the unpickled object after the last opcode (at most
``MAX_DEPTH`` containers deep and ``budget`` nodes, counting a shared container each time it is reached, as
Paddle's recursive post-processing will) and makes each placeholder a numpy object:
``np.frombuffer(data, DTYPES[code]).reshape(shape, order)``, a view of the bytes object the pickle holds; a
numpy scalar; a dtype of ``DTYPES``. A placeholder whose state never came, and any value that is not a
dict, OrderedDict, list, tuple, set, str, bytes, int, float, bool or None, is refused.
"""
import collections
import math
import pickle

import numpy as np

__all__ = ['DTYPES', 'MAX_DEPTH', 'NDARRAY', 'Array', 'Dtype', 'Placeholder', 'Refused', 'Scalar', 'built_dtype',
           'check_data', 'check_key', 'check_shape', 'kind', 'show', 'to_data']

MAX_DEPTH = 100
# numpy's code in a pickled dtype -> the dtype: the plain numeric ones (Paddle saves bfloat16 as uint16)
DTYPES = {code: np.dtype(code).newbyteorder('<') for code in (
    'b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8', 'c8', 'c16')}
_MAX_DIMS = 32  # numpy 1.x's NPY_MAXDIMS
_LEAVES = (str, bytes, int, float, bool, type(None))  # data that holds no other data


class Refused(Exception):
    """The pickle is not data in ``paddle.save``'s forms. ``found`` completes "its pickle ..."."""

    def __init__(self, found):
        super().__init__(found)
        self.found = found


def show(x, depth=0):
    """A short description of a value from the file (never its full repr: it may be huge or deep)."""
    if type(x) in (str, bytes):
        return repr(x[:40]) + ('...' if len(x) > 40 else '')
    if type(x) is int and x.bit_length() > 64:
        return 'an int of {} bits'.format(x.bit_length())  # repr would be slow, or refused past 4300 digits
    if type(x) in (int, float, bool, type(None)):
        return repr(x)
    if type(x) in (tuple, list) and depth < 2:
        inner = ', '.join(show(v, depth + 1) for v in x[:8]) + (', ...' if len(x) > 8 else '')
        return '({}{})'.format(inner, ',' if len(x) == 1 else '') if type(x) is tuple else '[{}]'.format(inner)
    return kind(x)


def kind(x):
    """What `x` is: 'a numpy array', 'the global numpy.dtype', 'a dict', ..."""
    if isinstance(x, Placeholder):
        return x.what
    if x is NDARRAY or isinstance(getattr(x, '__self__', None), pickle._Unpickler):  # a stand-in
        return 'the global ' + x.__doc__
    name = type(x).__name__
    return ('an ' if name[0] in 'aeiouAEIOU' else 'a ') + name


def check_shape(shape, whose):
    # numpy's own limits: at most 32 dimensions, the product of the non-zero ones within int64
    if (type(shape) is tuple and len(shape) <= _MAX_DIMS and set(map(type, shape)) <= {int}
            and min(shape, default=0) >= 0 and (math.prod(shape) or math.prod(d for d in shape if d)) < 2 ** 63):
        return shape
    raise Refused('gives {} the shape {}, not a tuple of at most {} non-negative ints whose product fits '
                  'int64'.format(whose, show(shape), _MAX_DIMS))


def built_dtype(dtype, whose):
    if type(dtype) is not Dtype or dtype.dtype is None:
        raise Refused('gives {} the dtype {}, not a numpy.dtype of {} with its state'.format(
            whose, show(dtype), '/'.join(DTYPES)))
    return dtype.dtype


def check_data(data, dtype, shape, whose):
    """The bytes of an array: exactly prod(shape) * itemsize of them."""
    if type(data) not in (bytes, bytearray):
        raise Refused('gives {} the data {}, not bytes'.format(whose, show(data)))
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise Refused('gives {} of shape {} and dtype {} ({} bytes) {} bytes of data'.format(
            whose, shape, dtype.name, math.prod(shape) * dtype.itemsize, len(data)))


def check_key(key, depth=0):
    """Dict keys and set members: what paddle.save writes (a deep tuple would overflow C's hash)."""
    if type(key) in _LEAVES:
        return
    if type(key) is tuple and depth < MAX_DEPTH:
        for item in key:
            check_key(item, depth + 1)
        return
    raise Refused('uses {} as a dict key or set member'.format(
        'a tuple nested deeper than {}'.format(MAX_DEPTH) if type(key) is tuple else kind(key)))


class Placeholder(object):
    """What a stand-in returns for a numpy object; `value` makes the numpy object after unpickling."""
    __slots__ = ()
    what = 'a placeholder'

    def build(self, state):
        raise Refused('gives a state (BUILD) to {}'.format(self.what))


class Dtype(Placeholder):
    __slots__ = ('code', 'dtype')
    what = 'a numpy.dtype'

    def __init__(self, code):
        self.code, self.dtype = code, None

    def build(self, state):
        if self.dtype is not None:
            raise Refused('gives numpy.dtype {!r} a second state'.format(self.code))
        dtype = DTYPES[self.code]
        order = '|' if dtype.itemsize == 1 else '<'
        plain = (3, order, None, None, None, -1, -1, 0)
        if not (type(state) is tuple and len(state) == 8 and all(type(v) is type(p) for v, p in zip(state, plain))
                and state[:5] == plain[:5] and state[5] in (-1, dtype.itemsize) and state[6:] == plain[6:]):
            raise Refused('gives numpy.dtype {!r} the state {}, not the plain one {} (a byte order, sub-array, '
                          'names, fields, size or flags of its own are not numeric weights)'.format(
                              self.code, show(state), plain))
        self.dtype = dtype

    def value(self):
        if self.dtype is None:
            raise Refused('holds numpy.dtype {!r} without its state (no BUILD)'.format(self.code))
        return self.dtype


class Array(Placeholder):
    __slots__ = ('data', 'dtype', 'shape', 'order')
    what = 'a numpy array'

    def __init__(self):
        self.data = None

    def set(self, data, dtype, shape, order):
        check_data(data, dtype, shape, 'a numpy array')
        self.data, self.dtype, self.shape, self.order = data, dtype, shape, order

    def build(self, state):
        if self.data is not None:
            raise Refused('gives a numpy array a second state')
        if not (type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1):
            raise Refused('gives a numpy array the state {}, not (1, shape, dtype, is_fortran, bytes)'.format(
                show(state)))
        _, shape, dtype, fortran, data = state
        if type(fortran) is not bool:
            raise Refused('gives a numpy array the order flag {}, not True or False'.format(show(fortran)))
        self.set(data, built_dtype(dtype, 'a numpy array'), check_shape(shape, 'a numpy array'),
                 'F' if fortran else 'C')

    def value(self):
        if self.data is None:
            raise Refused('holds a numpy array without its state (no BUILD)')
        # [n * itemsize bytes] -> shape, a view of the pickle's own bytes
        return np.frombuffer(self.data, self.dtype).reshape(self.shape, order=self.order)


class Scalar(Placeholder):
    __slots__ = ('data', 'dtype')
    what = 'a numpy scalar'

    def __init__(self, data, dtype):
        self.data, self.dtype = data, dtype

    def value(self):
        return np.frombuffer(self.data, self.dtype)[0]


class _Name(object):
    """numpy.ndarray: only an argument of _reconstruct, never called."""
    __doc__ = 'numpy.ndarray'


NDARRAY = _Name()


def to_data(obj, budget):
    """`obj` with the placeholders made numpy objects; refuses other types, nesting deeper than MAX_DEPTH and
    more than `budget` nodes counted as a tree (what Paddle's recursive post-processing will visit)."""
    done = {}  # id -> (converted, tree size); the originals stay alive in obj, so ids are not reused

    def convert(x, depth):
        cls = type(x)
        if cls in _LEAVES:
            return x, 1
        if id(x) in done:
            return done[id(x)]
        if depth >= MAX_DEPTH:
            raise Refused('nests containers deeper than {} levels'.format(MAX_DEPTH))
        if cls is list or cls is tuple or cls is set:
            result, size = [], 1
            for item in x:
                value, item_size = convert(item, depth + 1)
                result.append(value)
                size += item_size
            result = result if cls is list else cls(result)
        elif cls in (dict, collections.OrderedDict):
            result, size = cls(), 1
            for key, value in x.items():
                (key, key_size), (value, value_size) = convert(key, depth + 1), convert(value, depth + 1)
                result[key] = value
                size += key_size + value_size
        elif isinstance(x, Placeholder):
            result, size = x.value(), 1
        else:
            raise Refused('holds {}, which is not data paddle.save writes'.format(show(x)))
        if size > budget:
            raise Refused('reaches more than {} values through shared containers'.format(budget))
        done[id(x)] = result, size
        return result, size

    try:
        return convert(obj, 0)[0]
    finally:
        done.clear()  # convert's closure is a cycle: without this the arrays would wait for the collector
