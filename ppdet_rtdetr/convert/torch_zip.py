"""Read a PyTorch ``.pth`` (the zip format of ``torch.save`` since torch 1.6) into numpy, without torch.

No arbitrary unpickling: the pickle may only name the classes and functions a state dict is made of
(``OrderedDict``, typed storages, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``). Any other
global becomes an inert `Opaque` placeholder (nothing is imported, nothing of it runs), so extra training
metadata in a checkpoint does not stop us from reading its weights.
"""
import collections
import pickle
import zipfile

import numpy as np

__all__ = ['CheckpointError', 'Opaque', 'read_torch_zip']


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of the expected model; the message names the file."""


class Opaque(object):
    """Stands for an object of a class the reader does not load (`name` is 'module.qualname')."""
    name = '?'

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f'<not loaded: {self.name}>'


_DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
           'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16, 'CharStorage': np.int8,
           'ByteStorage': np.uint8, 'BoolStorage': np.bool_}


class _StorageType(object):
    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2: a (possibly strided) view of a flat storage, as a numpy copy."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == 'torch' and name.endswith('Storage'):
            return _StorageType(name)
        return type(name, (Opaque,), {'name': f'{module}.{name}'})

    def persistent_load(self, pid):
        # ('storage', storage type, key of the data file, device, number of elements)
        kind, storage_type, key, _, numel = pid
        if kind != 'storage' or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
        if storage_type.name not in _DTYPES:
            raise pickle.UnpicklingError(f'unsupported tensor storage {storage_type.name}')
        return self._read_storage(key, np.dtype(_DTYPES[storage_type.name]), numel)


def read_torch_zip(path):
    """The object `torch.save` wrote to `path`, with every tensor as a numpy array.

    Raises:
        CheckpointError: not a zip-format torch checkpoint, truncated or corrupt (the message names `path`).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
            if len(pkl) != 1:
                raise CheckpointError(f'{path}: a zip file, but not a PyTorch checkpoint (no data.pkl)')
            root = pkl[0][:-len('data.pkl')]
            if root + 'byteorder' in names and archive.read(root + 'byteorder') != b'little':
                raise CheckpointError(f'{path}: big-endian checkpoints are not supported')
            storages = {}

            def read_storage(key, dtype, numel):
                if key not in storages:
                    raw = archive.read(f'{root}data/{key}')
                    storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder('<'), count=numel)
                return storages[key]

            with archive.open(pkl[0]) as f:
                return _Unpickler(f, read_storage).load()
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise CheckpointError(f'{path}: not a PyTorch zip checkpoint, or truncated ({e})') from e
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as e:
        raise CheckpointError(f'{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {e})') from e
