"""Malicious weights files for the safe-loader tests: pickles that call a named global when unpickled.

``pickle`` itself cannot write ``os.system`` under that name (it writes the function's real module,
``posix``), so `Call` names its global by strings and `write_pickle` writes it with the opcodes of the
requested protocol (0-5), including the Python 2 names (``__builtin__``) pickle uses below protocol 3.
Every payload of `payloads` creates the file ``marker`` when it runs: a test asserts that it never appears.
`numpy_dtype` / `numpy_array` write numpy's own pickled forms with any arguments and state, for the attacks
that use only numpy's globals.
"""
import _compat_pickle
import io
import pickle


class Call(object):
    """Unpickles as ``module.name(*args)``, then BUILD with `state` unless it is None; nothing is imported
    when the pickle is written."""

    def __init__(self, module, name, *args, state=None):
        self.module, self.name, self.args, self.state = module, name, args, state

    def __reduce__(self):
        return Global(self.module, self.name), self.args, self.state


class Global(object):
    """Unpickles as the global ``module.name`` itself (not called)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self):  # pickle asks the callable of a reduce to be callable; never called
        raise AssertionError('a stand-in for {}.{}'.format(self.module, self.name))


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing `Global` as the global it names."""
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_named_global(self, obj):
        module, name = obj.module, obj.name
        if self.proto < 3:  # as pickle does for these protocols: Python 2 names
            module, name = _compat_pickle.REVERSE_NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + '{}\n{}\n'.format(module, name).encode('ascii'))
        self.memoize(obj)

    dispatch[Global] = _save_named_global


def write_pickle(path, obj, protocol):
    """Pickle `obj` (which may hold `Call` objects) to `path` with `protocol` (0-5)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol).dump(obj)
    with open(path, 'wb') as f:
        f.write(buffer.getvalue())


def payloads(marker):
    """{id: (Call that creates `marker`, the global's name as the loader must report it)}."""
    marker = str(marker)
    return {
        'os.system': (Call('os', 'system', 'touch ' + marker), 'os.system'),
        'posix.system': (Call('posix', 'system', 'touch ' + marker), 'posix.system'),
        'builtins.eval': (Call('builtins', 'eval', 'open({!r}, "w").close()'.format(marker)), 'builtins.eval'),
        'subprocess.Popen': (Call('subprocess', 'Popen', ['touch', marker]), 'subprocess.Popen'),
        'subprocess.check_call': (Call('subprocess', 'check_call', ['touch', marker]), 'subprocess.check_call'),
    }


PLAIN_DTYPE_STATE = (3, '<', None, None, None, -1, -1, 0)  # what numpy pickles for np.dtype('f4') and the like


def numpy_dtype(code, state=PLAIN_DTYPE_STATE, args=(False, True)):
    """numpy's pickled form of ``np.dtype(code)``: ``numpy.dtype(code, False, True)`` + BUILD `state`."""
    return Call('numpy', 'dtype', code, *args, state=state)


def numpy_array(shape, dtype, data, fortran=False, state=None):
    """numpy's pickled form of an array: ``_reconstruct(numpy.ndarray, (0,), b'b')`` + BUILD
    ``(1, shape, dtype, fortran, data)`` (or `state`); `dtype` is usually a `numpy_dtype`."""
    return Call('numpy.core.multiarray', '_reconstruct', Global('numpy', 'ndarray'), (0,), b'b',
                state=(1, shape, dtype, fortran, data) if state is None else state)
