"""Unpickle a weights file as data: every global is a stand-in, numpy gets only checked numbers.

``load(file, size)`` runs Python's own pickle interpreter (``pickle._Unpickler``, so that each opcode can be
checked) with a dispatch table of data opcodes only. Each global the pickle names resolves to a stand-in
here, never to the real callable; a stand-in accepts only the form ``paddle.save`` (and numpy's pickling
under it) writes, and returns a placeholder of ``weights_numpy`` or a builtin:

* ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` + BUILD ``(1, shape, dtype, is_fortran,
  bytes)``; ``numpy.dtype(code, False, True)`` + BUILD ``(3, '<' or '|', None, None, None, -1 or itemsize,
  -1, 0)``; ``numpy.core.multiarray.scalar(dtype, bytes)``; protocol 5's ``numpy.core.numeric._frombuffer(
  bytes or bytearray, dtype, shape, 'C' or 'F')``; numpy 2's ``numpy._core`` names alike (the parts are
  checked by the placeholders);
* Paddle's saved Tensor ``builtins.tuple(((name, array),))`` and saved DenseTensor ``builtins.eval('data',
  {'data': array})`` (the array is returned, nothing is evaluated);
* ``collections.OrderedDict()``, ``builtins.set([hashable, ...])`` and, as protocols 0-2 write bytes,
  ``builtins.bytes()`` and ``_codecs.encode(str, 'latin1')``.

BUILD is allowed only on the array and dtype placeholders, once each; REDUCE calls only stand-ins. Opcodes
that build class instances (INST, OBJ, NEWOBJ, NEWOBJ_EX), reach outside the file (PERSID, BINPERSID, EXT1/2/4,
out-of-band buffers) or make a frozenset are refused; dict keys and set members must be strings, bytes,
numbers, None or tuples of these (a deeply nested tuple key overflows CPython's hash). Anything else raises
`Refused`, whose ``found`` says what was found. Then ``weights_numpy.to_data`` makes the numpy objects.

Memory: no read asks for more bytes than the file has left, so array data is at most the bytes read from the
file; the stand-ins copy at most as many bytes / items as the file has (a memoized string encoded again and
again is refused); Python objects are at most one per opcode, so per byte of the file. A file that ends
early or is not a pickle raises `Corrupt` (or the unpickler's own error).
"""
import _compat_pickle
import collections
import functools
import io
import pickle
import pickletools

from . import weights_numpy as wn
from .weights_numpy import Refused

__all__ = ['Corrupt', 'Refused', 'load']


class Corrupt(Exception):
    """The file ends before its pickle does, or the pickle is malformed."""


_BASE = pickle._Unpickler.dispatch
_OPNAME = {op.code.encode('latin-1')[0]: op.name for op in pickletools.opcodes}
_NOT_DATA = {  # opcode -> what it does; paddle.save writes none of them
    'INST': 'builds an object of a class', 'OBJ': 'builds an object of a class',
    'NEWOBJ': 'builds an object of a class', 'NEWOBJ_EX': 'builds an object of a class',
    'PERSID': 'refers to an object outside the file', 'BINPERSID': 'refers to an object outside the file',
    'EXT1': 'names a global by an extension code', 'EXT2': 'names a global by an extension code',
    'EXT4': 'names a global by an extension code', 'NEXT_BUFFER': 'refers to a buffer outside the file',
    'READONLY_BUFFER': 'refers to a buffer outside the file', 'FROZENSET': 'makes a frozenset',
}


def _refuse_opcode(reader, code):
    raise Refused('uses the opcode {} ({}), which paddle.save does not write'.format(
        _OPNAME[code], _NOT_DATA[_OPNAME[code]]))


def _not_an_opcode(reader, code):
    raise Corrupt('byte {:#04x} is not a pickle opcode'.format(code))


def _dispatch():
    """{byte: handler} for all 256 bytes (a plain dict: the loop's lookup is the fast one): pickle's handler
    for a data opcode, a refusal for the others, an error for a byte that is no opcode."""
    table = {}
    for code in range(256):
        if code in _OPNAME and _OPNAME[code] not in _NOT_DATA:
            table[code] = _BASE[code]
        else:
            table[code] = functools.partial(_refuse_opcode if code in _OPNAME else _not_an_opcode, code=code)
    return table


class _Bounded(object):
    """``read`` / ``readline`` of a file that never ask for more than the file has left: a length written
    in the pickle cannot make the reader allocate more than the file's size."""

    def __init__(self, file, size):
        self._file, self.left = file, size

    def read(self, n):
        if n > self.left:
            raise Corrupt('truncated: an entry needs {} bytes where {} are left'.format(n, self.left))
        data = self._file.read(n)
        self.left -= len(data)
        if len(data) != n:
            raise Corrupt('truncated: the file ended while reading {} bytes'.format(n))
        return data

    def readline(self):
        line = self._file.readline()
        self.left -= len(line)
        if not line.endswith(b'\n'):  # pickle would take the rest of a cut line as a whole name or number
            raise Corrupt('truncated: the file ended inside a line')
        return line


class _Reader(pickle._Unpickler):
    """The pure-Python unpickler with data opcodes only, stand-ins for globals and checked BUILD / REDUCE."""
    dispatch = _dispatch()

    def __init__(self, file, size):
        super().__init__(_Bounded(file, size), encoding='latin1')
        self._budget = size + 1024  # bytes / items the stand-ins may copy: what the file holds
        self._globals = {('numpy', 'ndarray'): wn.NDARRAY, ('numpy', 'dtype'): self._dtype,
                         ('builtins', 'tuple'): self._tuple, ('builtins', 'eval'): self._eval,
                         ('builtins', 'set'): self._set, ('builtins', 'bytes'): self._bytes,
                         ('collections', 'OrderedDict'): self._ordered_dict, ('_codecs', 'encode'): self._encode}
        for core in ('numpy.core', 'numpy._core'):  # numpy 1.x and numpy 2 names of the same functions
            self._globals[(core + '.multiarray', '_reconstruct')] = self._reconstruct
            self._globals[(core + '.multiarray', 'scalar')] = self._scalar
            self._globals[(core + '.numeric', '_frombuffer')] = self._frombuffer
        self._callables = {id(f): f for f in self._globals.values() if f is not wn.NDARRAY}

    def load(self):
        """pickle's own loop, except that inside a frame (protocols 4-5: every small opcode) ``self.read`` is the
        frame's ``BytesIO.read``, a C call, where pickle goes through a Python method per read. A value cut by
        the end of its frame is read short (pickle raises), and is then refused or fails like any short value."""
        self.metastack, self.stack, self.proto, self._frame = [], [], 0, None
        self.append = self.stack.append
        self.read, self.readline = self._file_read, self._file_readline
        dispatch = self.dispatch
        try:
            while True:
                key = self.read(1)
                if not key:  # the end of a frame (at the file's end _Bounded raises)
                    self.read, self.readline, self._frame = self._file_read, self._file_readline, None
                    continue
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value

    def _load_frame(self):
        size = int.from_bytes(self.read(8), 'little')
        if self._frame is not None and self._frame.read(1):
            raise Corrupt('a frame begins inside another one')
        self._frame = io.BytesIO(self._file_read(size))
        self.read, self.readline = self._frame.read, self._read_frame_line

    def _read_frame_line(self):
        line = self._frame.readline()
        if not line.endswith(b'\n'):
            raise Corrupt('a line is cut by the end of its frame')
        return line

    def find_class(self, module, name):
        resolved = _python3_name(module, name)
        if resolved in self._globals:
            return self._globals[resolved]
        written, full = '{}.{}'.format(module, name), '{}.{}'.format(*resolved)
        raise Refused('names the global ' + (full if full == written else '{} (written as {})'.format(
            full, written)))

    def _charge(self, n):
        self._budget -= n
        if self._budget < 0:
            raise Refused('copies more data than the file holds (a memoized value is reused again and again)')

    # the opcodes whose meaning is checked here; the rest are pickle's own
    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if self._callables.get(id(func)) is not func:
            raise Refused('calls {}{}, which paddle.save never writes'.format(
                wn.kind(func), ' directly' if func is wn.NDARRAY else ''))
        if type(args) is not tuple:
            raise Refused('calls the global {} with {}, not a tuple'.format(func.__doc__, wn.show(args)))
        self.stack[-1] = func(*args)

    def _load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, wn.Placeholder):
            raise Refused('gives a state (BUILD) to {}; paddle.save gives one only to numpy arrays and '
                      'dtypes'.format(wn.kind(target)))
        target.build(state)

    def _load_inst(self):
        # INST names its class inline: a global that is not data is reported as such
        self.find_class(self.readline()[:-1].decode('ascii'), self.readline()[:-1].decode('ascii'))
        _refuse_opcode(self, pickle.INST[0])

    def _load_setitem(self):
        wn.check_key(self.stack[-2])
        _BASE[pickle.SETITEM[0]](self)

    def _load_setitems(self):
        self._check_marked_keys()
        _BASE[pickle.SETITEMS[0]](self)

    def _load_dict(self):
        self._check_marked_keys()
        _BASE[pickle.DICT[0]](self)

    def _check_marked_keys(self):
        for key in self.stack[::2]:  # the items above the mark: key, value, key, value...
            wn.check_key(key)

    def _load_additems(self):
        for item in self.stack:
            wn.check_key(item)
        _BASE[pickle.ADDITEMS[0]](self)

    def _load_bytearray8(self):
        # pickle allocates the declared length first; reading it first bounds it by the file
        n = int.from_bytes(self.read(8), 'little')
        self.append(bytearray(self.read(n)))

    # stand-ins: each docstring is the global it stands for
    def _reconstruct(self, *args):
        """numpy.core.multiarray._reconstruct"""
        if args == (wn.NDARRAY, (0,), b'b') and type(args[2]) is bytes:  # numpy's form: checked below in detail
            return wn.Array()
        _require(len(args) == 3 and args[0] is wn.NDARRAY and type(args[1]) is tuple and len(args[1]) == 1
                 and type(args[1][0]) is int and args[1][0] == 0 and type(args[2]) is bytes and args[2] == b'b',
                 self._reconstruct, args, "(numpy.ndarray, (0,), b'b')")
        return wn.Array()

    def _dtype(self, *args):
        """numpy.dtype"""
        _require(len(args) == 3 and type(args[0]) is str and args[0] in wn.DTYPES and args[1] is False
                 and args[2] is True, self._dtype, args, '(code, False, True) for a code of ' +
                 '/'.join(wn.DTYPES))
        return wn.Dtype(args[0])

    def _scalar(self, *args):
        """numpy.core.multiarray.scalar"""
        _require(len(args) == 2, self._scalar, args, '(dtype, bytes)')
        dtype = wn.built_dtype(args[0], 'a numpy scalar')
        wn.check_data(args[1], dtype, (), 'a numpy scalar')
        return wn.Scalar(args[1], dtype)

    def _frombuffer(self, *args):
        """numpy.core.numeric._frombuffer"""
        _require(len(args) == 4 and type(args[3]) is str and args[3] in ('C', 'F'), self._frombuffer, args,
                 "(bytes, dtype, shape, 'C' or 'F')")
        array = wn.Array()
        array.set(args[0], wn.built_dtype(args[1], 'a numpy array'), wn.check_shape(args[2], 'a numpy array'),
                  args[3])
        return array

    def _tuple(self, *args):
        """builtins.tuple"""
        # Paddle writes a Tensor as tuple((name, array)); plain tuples are opcodes, not this global
        _require(len(args) == 1 and type(args[0]) is tuple and len(args[0]) == 2 and type(args[0][0]) is str
                 and type(args[0][1]) is wn.Array, self._tuple, args, "Paddle's saved-tensor form ((name, array),)")
        return args[0]

    def _eval(self, *args):
        """builtins.eval"""
        # Paddle's reduce_DenseTensor writes eval('data', {'data': array}): return the array, evaluate nothing
        _require(len(args) == 2 and type(args[0]) is str and args[0] == 'data' and type(args[1]) is dict
                 and len(args[1]) == 1 and type(args[1].get('data')) is wn.Array, self._eval, args,
                 "Paddle's saved-tensor form ('data', {'data': array})")
        return args[1]['data']

    def _set(self, *args):
        """builtins.set"""
        _require(len(args) == 1 and type(args[0]) is list, self._set, args, '([items],)')
        for item in args[0]:
            wn.check_key(item)
        self._charge(len(args[0]))
        return set(args[0])

    def _bytes(self, *args):
        """builtins.bytes"""
        _require(not args, self._bytes, args, '()')  # b'' below protocol 3; bytes(n) would allocate n bytes
        return b''

    def _ordered_dict(self, *args):
        """collections.OrderedDict"""
        _require(not args, self._ordered_dict, args, '()')
        return collections.OrderedDict()

    def _encode(self, *args):
        """_codecs.encode"""
        # protocols 0-2 write bytes as _codecs.encode(str, 'latin1')
        _require(len(args) == 2 and type(args[0]) is str and type(args[1]) is str and args[1] == 'latin1',
                 self._encode, args, "(str, 'latin1')")
        self._charge(len(args[0]))
        return args[0].encode('latin1')


def _require(ok, stand_in, args, form):
    if not ok:
        raise Refused('names the global {} (called with {} instead of {})'.format(
            stand_in.__doc__, wn.show(args), form))


for _code, _load in ((pickle.REDUCE, _Reader._load_reduce), (pickle.BUILD, _Reader._load_build),
                     (pickle.FRAME, _Reader._load_frame),
                     (pickle.INST, _Reader._load_inst), (pickle.SETITEM, _Reader._load_setitem),
                     (pickle.SETITEMS, _Reader._load_setitems), (pickle.DICT, _Reader._load_dict),
                     (pickle.ADDITEMS, _Reader._load_additems), (pickle.BYTEARRAY8, _Reader._load_bytearray8)):
    _Reader.dispatch[_code[0]] = _load


def _python3_name(module, name):
    """The name pickle itself resolves a protocol 0-2 global to (``__builtin__.tuple`` -> ``builtins.tuple``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def load(file, size):
    """The object pickled in `file` (`size` bytes from its position), with numpy arrays, scalars and dtypes.

    Raises:
        Refused: the pickle is not data in paddle.save's forms (see the module docstring).
        Corrupt: the file ends before the pickle does, or a byte is not an opcode. Other malformed pickles
            raise the unpickler's own errors (pickle.UnpicklingError, EOFError, KeyError, ...).
    """
    reader = _Reader(file, size)
    try:
        obj = reader.load()
    finally:
        # the memo holds every bytes object, and the stand-ins (bound methods) make the reader a cycle that
        # only the garbage collector would free: drop both so each array's bytes go when its array goes
        reader.memo, reader._globals, reader._callables = None, None, None
    return wn.to_data(obj, size + 1)
