"""safe_load.load: pickles that call code are refused before anything runs, and so are pickles that use only
numpy's own globals to reach raw memory, crash the process or claim gigabytes; genuine Paddle weights files
load exactly as paddle.load gives them (same types, key order, names, dtypes and bytes)."""
import collections
import json
import os
import pickle
import re
import subprocess
import sys
import types

import numpy as np
import paddle
import pytest

from helpers.data_cases import LogRecords
from helpers.payloads import PLAIN_DTYPE_STATE, Call, Global, numpy_array, numpy_dtype, payloads, write_pickle

from ppdet_rtdetr.engine import checkpoint, safe_load

PROTOCOLS = range(6)
PAYLOADS = sorted(payloads('marker'))


def _nest(payload, where):
    """`payload` placed as a file's content, after genuine arrays in a dict, a list or an optimizer state."""
    weight = np.arange(6, dtype='float32').reshape(2, 3)
    return {
        'top': payload,
        'dict': {'conv.weight': weight, 'conv.bias': payload},
        'list': [weight, ('linear_0.w_0', weight), payload],
        'deep': {'w': ('w_0', weight), 'LR_Scheduler': collections.OrderedDict(last_epoch=[1, {'lr': payload}])},
    }[where]


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('kind', PAYLOADS)
@pytest.mark.parametrize('where', ['top', 'dict', 'list', 'deep'])
def test_a_pickle_that_calls_code_is_refused_and_nothing_runs(tmp_path, kind, protocol, where):
    marker = tmp_path / 'marker'
    payload, name = payloads(marker)[kind]
    path = str(tmp_path / 'model.pdparams')
    write_pickle(path, _nest(payload, where), protocol)
    with pytest.raises(safe_load.UnsafeWeightsError) as error:
        safe_load.load(path)
    message = str(error.value)
    assert message.startswith(path + ': refused to load: its pickle names the global ' + name), message
    assert not marker.exists(), 'the payload ran'


@pytest.mark.parametrize('kind', PAYLOADS)
def test_the_payloads_are_live_under_paddle_load(tmp_path, kind):
    """The refused files are real attacks: plain paddle.load runs them."""
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'model.pdparams')
    write_pickle(path, _nest(payloads(marker)[kind][0], 'dict'), 2)
    try:
        paddle.load(path)
    except Exception:
        pass  # the payload's return value is not a tensor; it has run by then
    for _ in range(100):  # Popen returns before its child has touched the file
        if marker.exists():
            break
        import time
        time.sleep(0.05)
    assert marker.exists()


@pytest.mark.parametrize('call, name', [
    (Call('builtins', 'eval', 'data', {'data': 1, '__builtins__': None}), 'builtins.eval'),
    (Call('builtins', 'getattr', 'os', 'system'), 'builtins.getattr'),
    (Call('_codecs', 'encode', 'abc', 'rot13'), '_codecs.encode'),
    (Call('numpy.core.multiarray', '_reconstruct', Call('numpy', 'memmap'), (0,), b'b'), 'numpy.memmap'),
    (Call('builtins', 'bytes', 10 ** 12), 'builtins.bytes'),
    (Call('copyreg', '_reconstructor', Call('os', '_wrap_close'), 1, None), 'copyreg._reconstructor'),
    (Call('paddle', 'load', 'other.pdparams'), 'paddle.load'),
])
def test_allowed_names_used_for_something_else_are_refused(tmp_path, call, name):
    path = str(tmp_path / 'x.pdopt')
    write_pickle(path, {'state': call}, 4)
    with pytest.raises(safe_load.UnsafeWeightsError, match='names the global ' + name):
        safe_load.load(path)


@pytest.mark.parametrize('opcodes, name', [
    (b"(S'touch {m}'\nios\nsystem\n.", 'os.system'),  # INST: protocol 0 builds a class instance by name
    (b"(cposix\nsystem\nS'touch {m}'\no.", 'posix.system'),  # OBJ: protocol 1
    (b"c__builtin__\ngetattr\n(cos\nsystem\nS'x'\ntR.", 'builtins.getattr (written as __builtin__.getattr)'),
])
def test_every_opcode_that_names_a_global_is_checked(tmp_path, opcodes, name):
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'w.pdparams')
    with open(path, 'wb') as f:
        f.write(opcodes.replace(b'{m}', str(marker).encode()))
    with pytest.raises(safe_load.UnsafeWeightsError, match=r'names the global {}\.'.format(re.escape(name))):
        safe_load.load(path)
    assert not marker.exists()


F4 = numpy_dtype('f4')
OBJECT_ARRAY = numpy_array((1,), numpy_dtype('O8', state=(3, '|', None, None, None, -1, -1, 63)), b'A' * 8)
SPLIT = 'UnpackBigParamInfor@@'


def _split(parts, shape, slices, **more):
    """A protocol-2 state dict with `parts` ({name: 1-D float32 array}) joined by the split table."""
    return dict(parts, **more, **{SPLIT: {'w': {'OriginShape': shape, 'slices': slices}}})


_PART = np.arange(4, dtype='float32')
_TEXT = 'x' * 10 ** 4  # one object: the pickle holds it once and refers to it 100 times
ATTACKS = {  # id: (object to pickle, what the refusal says after "its pickle ")
    # the ingredients of the code-execution chain, written with numpy's globals only
    'object dtype array': (OBJECT_ARRAY, "names the global numpy.dtype (called with ('O8', False, True) instead of "
                                         "(code, False, True) for a code of b1/i1/"),
    'ndarray(shape, O, buffer)': (Call('numpy', 'ndarray', (1,), 'O', b'A' * 8),
                                  'calls the global numpy.ndarray directly'),
    'ndarray viewing an object array': (Call('numpy', 'ndarray', (1,), 'i8', OBJECT_ARRAY),
                                        "names the global numpy.dtype (called with ('O8'"),
    'dtype state claiming object flags': (numpy_dtype('f8', state=(3, '<', None, None, None, -1, -1, 63)),
                                          "gives numpy.dtype 'f8' the state (3, '<', None, None, None, -1, -1, 63), "
                                          "not the plain one (3, '<', None, None, None, -1, -1, 0)"),
    'dtype state with names and fields': (
        numpy_dtype('f8', state=(3, '|', None, ('a',), {'a': (F4, 0)}, 8, 1, 0)),
        "gives numpy.dtype 'f8' the state (3, '|', None, ('a',), a dict, 8, 1, 0), not the plain one"),
    'dtype state with a sub-array': (numpy_dtype('f8', state=(3, '<', (F4, (2,)), None, None, 8, 4, 0)),
                                     "gives numpy.dtype 'f8' the state (3, '<', (a numpy.dtype, a tuple), None, "),
    'structured dtype': (numpy_dtype('V8'), "names the global numpy.dtype (called with ('V8', False, True)"),
    'big-endian dtype': (numpy_array((1,), numpy_dtype('u2', state=(3, '>') + PLAIN_DTYPE_STATE[2:]), b'\0\1'),
                         "gives numpy.dtype 'u2' the state (3, '>', None, None, None, -1, -1, 0)"),
    'aligned dtype': (numpy_dtype('f4', args=(True, True)), "called with ('f4', True, True)"),
    # arrays: the data must be exactly shape x itemsize, the state numpy's own
    'shape and bytes differ': (numpy_array((2, 3), F4, b'\0' * 20),
                               'gives a numpy array of shape (2, 3) and dtype float32 (24 bytes) 20 bytes of data'),
    '2e9 elements from 54 bytes': (numpy_array((2 * 10 ** 9,), numpy_dtype('i1', state=(3, '|') +
                                                                           PLAIN_DTYPE_STATE[2:]), b''),
                                   'gives a numpy array of shape (2000000000,) and dtype int8 (2000000000 bytes) '
                                   '0 bytes of data'),
    'negative shape': (numpy_array((-1,), F4, b''), 'gives a numpy array the shape (-1,), not a tuple of'),
    'empty shape beyond int64': (numpy_array((0, 2 ** 40, 2 ** 40), F4, b''), 'whose product fits int64'),
    'a float in a shape': (numpy_array((2.0,), F4, b'\0' * 8), 'gives a numpy array the shape (2.0,), not a'),
    'array data not bytes': (numpy_array((1,), F4, 'abcd'), "gives a numpy array the data 'abcd', not bytes"),
    'array state of another version': (numpy_array(None, None, None, state=(2, (1,), F4, False, b'\0' * 4)),
                                       "gives a numpy array the state (2, (1,), a numpy.dtype, False, "),
    'array without state': (Call('numpy.core.multiarray', '_reconstruct', Global('numpy', 'ndarray'), (0,), b'b'),
                            'holds a numpy array without its state (no BUILD)'),
    'dtype without state': (numpy_dtype('f4', state=None), "holds numpy.dtype 'f4' without its state"),
    'array with an unbuilt dtype': (numpy_array((1,), numpy_dtype('f4', state=None), b'\0' * 4),
                                    'gives a numpy array the dtype a numpy.dtype, not a numpy.dtype of b1/'),
    '_reconstruct of a shape': (Call('numpy.core.multiarray', '_reconstruct', Global('numpy', 'ndarray'), (10,),
                                     b'b'), "called with (the global numpy.ndarray, (10,), b'b') instead of"),
    'scalar of an object dtype': (Call('numpy.core.multiarray', 'scalar', numpy_dtype('O8'), b'A' * 8),
                                  "names the global numpy.dtype (called with ('O8', False, True)"),
    'scalar of the wrong size': (Call('numpy.core.multiarray', 'scalar', F4, b'abc'),
                                 'gives a numpy scalar of shape () and dtype float32 (4 bytes) 3 bytes of data'),
    'state given to a scalar': (Call('numpy.core.multiarray', 'scalar', F4, b'abcd', state=(1,)),
                                'gives a state (BUILD) to a numpy scalar'),
    '_frombuffer of another size': (Call('numpy.core.numeric', '_frombuffer', b'\0' * 8, F4, (3,), 'C'),
                                    'gives a numpy array of shape (3,) and dtype float32 (12 bytes) 8 bytes'),
    'bare numpy.ndarray': ({'w': Global('numpy', 'ndarray')}, 'holds the global numpy.ndarray, which is not data'),
    'complex': (Call('builtins', 'complex', 1.0, 2.0), 'names the global builtins.complex'),
    'tuple of an object': (Call('builtins', 'tuple', [1, 2]), "called with ([1, 2],) instead of Paddle's"),
    'set of a huge bytes': (Call('builtins', 'set', 'x' * 10 ** 4), 'names the global builtins.set (called with'),
    'a string encoded 100 times': ([Call('_codecs', 'encode', _TEXT, 'latin1') for _ in range(100)],
                                   'copies more data than the file holds'),
    # Paddle's split big parameters: only parts that exist, each once, sizes that add up
    'one part joined 40 times': (_split({'w@@.0': _PART}, (160,), ['w@@.0'] * 40),
                                 "holds UnpackBigParamInfor@@['w'] whose part 'w@@.0' is used twice"),
    'a part of two entries': (dict(_split({'w@@.0': _PART}, (4,), ['w@@.0']), **{SPLIT: {
        'w': {'OriginShape': (4,), 'slices': ['w@@.0']}, 'v': {'OriginShape': (4,), 'slices': ['w@@.0']}}}),
        "holds UnpackBigParamInfor@@['v'] whose part 'w@@.0' is used twice"),
    'a missing part': (_split({'w@@.0': _PART}, (8,), ['w@@.0', 'w@@.1']),
                       "holds UnpackBigParamInfor@@['w'] whose part 'w@@.1' is not in the file"),
    'parts of another size': (_split({'w@@.0': _PART}, (2, 3), ['w@@.0']),
                              "holds UnpackBigParamInfor@@['w'] whose parts have 4 elements for the shape (2, 3)"),
    'parts of two dtypes': (_split({'w@@.0': _PART, 'w@@.1': _PART.astype('float64')}, (8,), ['w@@.0', 'w@@.1']),
                            "whose part 'w@@.1' is not a 1-D array of dtype float32"),
    'a split key also held whole': (_split({'w@@.0': _PART}, (4,), ['w@@.0'], w=_PART),
                                    'and the file also holds that key whole'),
}


@pytest.mark.parametrize('protocol', [2, 4])
@pytest.mark.parametrize('attack', list(ATTACKS))
def test_numpy_globals_used_for_anything_but_plain_arrays_are_refused(tmp_path, attack, protocol):
    """Each file uses only globals that genuine files use; the refusal names the file and what was found."""
    obj, found = ATTACKS[attack]
    path = str(tmp_path / 'w.pdparams')
    write_pickle(path, obj, protocol)
    with pytest.raises(safe_load.UnsafeWeightsError) as error:
        safe_load.load(path)
    assert str(error.value).startswith('{}: refused to load: its pickle '.format(path)), str(error.value)
    assert found in str(error.value), str(error.value)


OPCODE_ATTACKS = {  # id: (pickle opcodes, what the refusal says)
    'BUILD on a tuple': (b'\x80\x04K\x01\x85}b.', 'gives a state (BUILD) to a tuple; paddle.save gives one only'),
    'BUILD on a dict': (b'\x80\x04}Nb.', 'gives a state (BUILD) to a dict;'),
    'BUILD on an OrderedDict': (b'\x80\x02ccollections\nOrderedDict\n)R}b.', 'gives a state (BUILD) to an OrderedDict'),
    'second state of an array': (pickle.dumps(np.zeros(1, 'f4'), 2)[:-1] + b'(K\x01K\x01\x85h\x0bI00\nC\x04abcdtb.',
                                 'gives a numpy array a second state'),
    'NEWOBJ': (b'\x80\x02c__builtin__\nset\n)\x81.', 'uses the opcode NEWOBJ (builds an object of a class)'),
    'persistent id': (b'P1\n.', 'uses the opcode PERSID (refers to an object outside the file)'),
    'extension code': (b'\x80\x02\x82\x01.', 'uses the opcode EXT1'),
    'out-of-band buffer': (b'\x80\x05\x97.', 'uses the opcode NEXT_BUFFER'),
    'frozenset': (b'\x80\x04(K\x01\x91.', 'uses the opcode FROZENSET'),
    'a global called through a list': (b'\x80\x02]K\x01a)R.', 'calls a list'),
    '100000 nested lists': (b'(' * 100000 + b'l' * 100000 + b'.', 'nests containers deeper than 100 levels'),
    'a list holding itself': (b'\x80\x04]\x94h\x00a.', 'nests containers deeper than 100 levels'),
    '2**60 paths through shared lists': (
        b'\x80\x04]K\x00a' + b''.join(b'\x940]h' + bytes([i]) + b'ah' + bytes([i]) + b'a' for i in range(60)) + b'.',
        'reaches more than'),
    'a list as a dict key': (b'\x80\x04}]K\x01s.', 'uses a list as a dict key or set member'),
    'an array as a set member': (b'\x80\x04\x8f(' + pickle.dumps(np.zeros(1), 4)[11:-1] + b'\x90.',
                                 'uses a numpy array as a dict key or set member'),
}


@pytest.mark.parametrize('attack', list(OPCODE_ATTACKS))
def test_opcodes_that_are_not_plain_data_are_refused(tmp_path, attack):
    data, found = OPCODE_ATTACKS[attack]
    path = str(tmp_path / 'w.pdopt')
    with open(path, 'wb') as f:
        f.write(data)
    with pytest.raises(safe_load.UnsafeWeightsError) as error:
        safe_load.load(path)
    assert str(error.value).startswith('{}: refused to load: its pickle {}'.format(path, found)), str(error.value)
    with pytest.raises(safe_load.UnsafeWeightsError, match='^<bytes>: refused to load: its pickle '):
        safe_load.loads(data)


_CHILD = r"""
import json, resource, sys
from ppdet_rtdetr.engine import safe_load

def status_mb(field):
    with open('/proc/self/status') as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024

# 1 GiB of address space above what the imports took: allocating what the files claim would fail
limit = int(status_mb('VmSize') * 2 ** 20) + 2 ** 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = {}
for path in sys.argv[1:]:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets the peak RSS
    before = status_mb('VmRSS')
    try:
        safe_load.load(path)
        outcome = 'loaded'
    except Exception as e:
        outcome = '{}: {}'.format(type(e).__name__, e)
    results[path] = (outcome, status_mb('VmHWM') - before)
print('RESULTS', json.dumps(results))
"""


def test_files_that_crash_or_claim_gigabytes_are_refused_in_bounded_memory(tmp_path):
    """In a child process (a crash would end it with a signal) with 1 GiB of address space to spare: the 80-byte
    file that makes numpy segfault, a deep tuple used as a dict key (CPython's hash overflows the C stack), the
    47-byte file claiming 2e9 elements and a 40 MB part joined 40 times are refused, the peak RSS stays small."""
    part = np.zeros(10 ** 7, 'float32')
    files = {
        'sigsegv': (Call('builtins', 'tuple', Call('numpy', 'ndarray', (1,), 'O', b'A' * 8)), 4,
                    'calls the global numpy.ndarray directly'),
        'deep key': (b'\x80\x04}K\x00' + b'\x85' * 200000 + b'K\x01s.', None,
                     'uses a tuple nested deeper than 100 as a dict key or set member'),
        '2e9': (Call('numpy', 'ndarray', (2 * 10 ** 9,), 'b'), 4, 'calls the global numpy.ndarray directly'),
        '2e9 state': (ATTACKS['2e9 elements from 54 bytes'][0], 2, 'gives a numpy array of shape (2000000000,)'),
        '40 joins': (_split({'w@@.0': part}, (40 * part.size,), ['w@@.0'] * 40), 2, "part 'w@@.0' is used twice"),
    }
    paths = {}
    for name, (obj, protocol, _) in files.items():
        paths[name] = str(tmp_path / (name + '.pdparams'))
        if protocol is None:
            with open(paths[name], 'wb') as f:
                f.write(obj)
        else:
            write_pickle(paths[name], obj, protocol)
    assert os.path.getsize(paths['sigsegv']) == 80 and os.path.getsize(paths['2e9']) == 47
    for name in ('sigsegv', 'deep key'):  # live: plain unpickling dies of a signal
        done = subprocess.run([sys.executable, '-c', 'import pickle, sys; pickle.load(open(sys.argv[1], "rb"))',
                               paths[name]], capture_output=True)
        assert done.returncode == -11, (name, done.returncode)
    done = subprocess.run([sys.executable, '-c', _CHILD] + list(paths.values()), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split('RESULTS ', 1)[1])
    for name, (_, _, found) in files.items():
        outcome, peak_mb = results[paths[name]]
        assert outcome.startswith('UnsafeWeightsError: {}: refused to load: its pickle '.format(paths[name])), outcome
        assert found in outcome, outcome
        assert peak_mb < (100 if name == '40 joins' else 50), (name, peak_mb)  # the 40 MB part is read once


def assert_same(got, want, where='file'):
    """Equal structure, types, key order, tensor names (each load numbers unnamed tensors anew), dtypes and
    bytes: what paddle.load returned."""
    assert type(got) is type(want), '{}: {} instead of {}'.format(where, type(got), type(want))
    if isinstance(want, dict):
        assert list(got) == list(want), '{}: keys {} instead of {}'.format(where, list(got), list(want))
        for key in want:
            assert_same(got[key], want[key], '{}[{!r}]'.format(where, key))
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, '{}[{}]'.format(where, i))
    elif isinstance(want, paddle.Tensor):
        names = [n if not n.startswith('generated_tensor_') else 'generated' for n in (got.name, want.name)]
        assert (names[0], got.dtype, got.shape) == (names[1], want.dtype, want.shape), where
        assert got.numpy().tobytes() == want.numpy().tobytes(), '{}: other bytes'.format(where)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    else:
        assert got == want, '{}: {!r} instead of {!r}'.format(where, got, want)


def _trained_layer_and_optimizer(seed=1):
    """A Linear + BatchNorm after one AdamW step with a scheduler: moments, beta powers, LR state.

    Optimizer states are keyed by generated parameter names: a fresh name scope gives every call the same
    names, as a new process (the real resume) does."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        layer = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
        scheduler = paddle.optimizer.lr.PiecewiseDecay([2], [0.1, 0.01])
        optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=layer.parameters())
        layer(paddle.randn([5, 3])).sum().backward()
        optimizer.step()
        scheduler.step()
    return layer, optimizer


@pytest.mark.parametrize('protocol', [2, 3, 4])
def test_paddle_save_files_load_as_paddle_load_gives_them(tmp_path, protocol):
    layer, optimizer = _trained_layer_and_optimizer()
    optimizer_state = dict(optimizer.state_dict(), last_epoch=3)
    dense = paddle.to_tensor(np.linspace(-1, 1, 6, dtype='float64').reshape(2, 3))
    keep = dense.value().get_tensor()  # a DenseTensor: paddle.save writes it as eval('data', {'data': array})
    saved = {
        'model': layer.state_dict(),  # a state dict: paddle 2.0's layout with its name table
        'optimizer': optimizer_state,  # not one: Paddle's (name, array) tensor tuples
        'mixed': {'fp16': paddle.ones([2], dtype='float16'), 'ints': [1, 2.5, None, 'x', True],
                  'nested': {'dense': keep, 'step': np.int64(7)}},
        'tensor': layer[0].weight,
        'list': [paddle.arange(3), (paddle.zeros([0, 2], dtype='int32'), 'name')],
    }
    for name, obj in saved.items():
        path = str(tmp_path / '{}.pdparams'.format(name))
        paddle.save(obj, path, protocol=protocol)
        assert_same(safe_load.load(path), paddle.load(path), name)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_plain_pickles_of_numpy_state_dicts_load_as_paddle_load_gives_them(tmp_path, protocol):
    """Older official weights are pickled numpy dicts; numpy scalars, empty arrays, sets at every protocol."""
    state = collections.OrderedDict([
        ('conv.weight', np.random.RandomState(0).randn(2, 3, 1, 1).astype('float32')),
        ('fortran', np.asfortranarray(np.arange(6, dtype='int64').reshape(2, 3))),
        ('bool', np.array([True, False])), ('scalar', np.float32(0.5)), ('empty', np.zeros([0, 3], 'float16')),
        ('meta', {'tags': {'a', 'b'}, 'nan': float('nan'), 'big': 2 ** 70}),
    ])
    path = str(tmp_path / 'official.pdparams')
    with open(path, 'wb') as f:
        pickle.dump(state, f, protocol=protocol)
    got, want = safe_load.load(path), paddle.load(path)
    meta = got.pop('meta'), want.pop('meta')
    assert repr(meta[0]) == repr(meta[1])  # repr: nan != nan
    assert_same(got, want)


def test_big_arrays_split_by_protocol_2_are_joined_as_paddle_load_does(tmp_path):
    """paddle.save at protocol 2/3 splits arrays over 1 GiB into slices listed under UnpackBigParamInfor@@."""
    whole = np.arange(12, dtype='float32')
    state = {'w@@.0': whole[:8], 'w@@.1': whole[8:], 'b': whole[:2],
             'UnpackBigParamInfor@@': {'w': {'OriginShape': (3, 4), 'slices': ['w@@.0', 'w@@.1']}}}
    path = str(tmp_path / 'big.pdparams')
    with open(path, 'wb') as f:
        pickle.dump(state, f, protocol=2)
    got = safe_load.load(path)
    assert_same(got, paddle.load(path))
    np.testing.assert_array_equal(got['w'].numpy(), whole.reshape(3, 4))


class _ReportsHugeItems(np.ndarray):
    """An array whose dtype tells Paddle's split rule a 256 MiB itemsize: 3 elements fill a 1 GiB part."""

    @property
    def dtype(self):
        return types.SimpleNamespace(itemsize=2 ** 28)

    def flatten(self):
        return np.asarray(self).flatten()


@pytest.mark.parametrize('protocol', [2, 3])
def test_paddles_own_split_of_big_arrays_is_joined_as_paddle_load_does(tmp_path, protocol):
    """paddle.save's own steps (_build_saved_state_dict, _unpack_saved_dict, pickle.dump) with a weight that
    Paddle's rule splits into 1-D parts: the join gives the weight back, bit-equal to paddle.load's."""
    from paddle.framework.io import _build_saved_state_dict
    from paddle.framework.io_utils import _unpack_saved_dict

    layer, _ = _trained_layer_and_optimizer()
    saved = _build_saved_state_dict(layer.state_dict())
    saved['0.weight'] = saved['0.weight'].view(_ReportsHugeItems)  # [3, 4]: 12 elements -> 4 parts of 3
    saved = _unpack_saved_dict(saved, protocol)
    assert saved['UnpackBigParamInfor@@']['0.weight']['slices'] == ['0.weight@@.{}'.format(i) for i in range(4)]
    path = str(tmp_path / 'split.pdparams')
    with open(path, 'wb') as f:
        pickle.dump(saved, f, protocol=protocol)
    got = safe_load.load(path)
    assert_same(got, paddle.load(path))
    np.testing.assert_array_equal(got['0.weight'].numpy(), layer[0].weight.numpy())


@pytest.mark.parametrize('protocol', [2, 3, 4])
def test_half_precision_weights_and_optimizer_states_load_as_paddle_load_gives_them(tmp_path, protocol):
    """bf16 (saved as uint16) and fp16 parameters, an optimizer state with fp32 master weights and the LR
    scheduler's dict, numpy values that paddle.load leaves numpy (writable, as its arrays are; a Fortran-order
    array in Fortran order)."""
    paddle.seed(3)
    weights = {'w.bf16': paddle.randn([3, 5]).astype('bfloat16'), 'b.fp16': paddle.randn([5]).astype('float16')}
    optimizer = dict({name + '_moment1_0': paddle.zeros_like(v, dtype='float32') for name, v in weights.items()},
                     master_weights={name: value.astype('float32') for name, value in weights.items()},
                     LR_Scheduler={'last_epoch': 7, 'last_lr': 0.0125})
    files = {'model': weights, 'optimizer': optimizer,
             'with numpy': {'w': weights['w.bf16'], 'meta': {'anchors': np.linspace(0, 1, 6).reshape(2, 3),
                                                              'fortran': np.asfortranarray(np.eye(3, 2))}}}
    for name, obj in files.items():
        path = str(tmp_path / '{}.pdparams'.format(name))
        paddle.save(obj, path, protocol=protocol)
        got, want = safe_load.load(path), paddle.load(path)
        assert_same(got, want, name)
        with open(path, 'rb') as f:
            assert_same(safe_load.loads(f.read()), want, name + ' in memory')
    assert str(got['w'].dtype) == 'paddle.bfloat16' and got['meta']['anchors'].flags.writeable
    assert got['meta']['fortran'].flags.f_contiguous and want['meta']['fortran'].flags.f_contiguous
    got['meta']['anchors'][0, 0] = 5  # as with paddle.load's array


def test_a_ppdet_checkpoint_resumes_as_with_ppdet_load_weight(tmp_path):
    """model.pdparams (EMA weights) + .pdema (model) + .pdopt (optimizer, last_epoch), as save_model writes."""
    from ppdet.optimizer import ModelEMA
    from ppdet.utils.checkpoint import load_weight as ppdet_load_weight

    layer, optimizer = _trained_layer_and_optimizer()
    ema = ModelEMA(layer)
    ema.update(layer)
    checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), '5', 5, ema_model=ema.apply())
    stem = str(tmp_path / '5')
    for suffix in ('.pdparams', '.pdema', '.pdopt'):
        assert_same(safe_load.load(stem + suffix), paddle.load(stem + suffix), suffix)

    restored = []
    for load in (checkpoint.load_checkpoint, ppdet_load_weight):  # what RTDETRTrainer / ppdet's Trainer resume with
        fresh, fresh_optimizer = _trained_layer_and_optimizer(seed=2)  # other weights and moments
        fresh_ema = ModelEMA(fresh)
        last_epoch = load(fresh, stem, fresh_optimizer, fresh_ema)
        restored.append((last_epoch, fresh.state_dict(), fresh_optimizer.state_dict(), fresh_ema.state_dict,
                         fresh_ema.step))
    ours, ppdet = restored
    assert ours[0] == ppdet[0] == 5 and ours[4] == ppdet[4] == optimizer.state_dict()['LR_Scheduler']['last_epoch']
    for i, what in ((1, 'model'), (3, 'ema')):
        assert_same(dict(ours[i]), dict(ppdet[i]), what)
    assert_same(ours[2], ppdet[2], 'optimizer')
    assert_same(ours[2], optimizer.state_dict(), 'optimizer as saved')
    for key, value in paddle.load(stem + '.pdema').items():  # exchange: the model's weights are in .pdema
        assert ours[1][key].numpy().tobytes() == value.numpy().tobytes(), key


def test_export_weights_load_whole_or_not_at_all(tmp_path):
    """load_model_weights (tools/export_model.py's -o weights=): every weight from the file, bit for bit."""
    layer, _ = _trained_layer_and_optimizer()
    paddle.save(layer.state_dict(), str(tmp_path / 'w.pdparams'))
    fresh, _ = _trained_layer_and_optimizer(seed=2)
    checkpoint.load_model_weights(fresh, str(tmp_path / 'w'))
    assert_same({k: v.numpy() for k, v in fresh.state_dict().items()},
                {k: v.numpy() for k, v in layer.state_dict().items()})
    paddle.save({'0.weight': layer[0].weight}, str(tmp_path / 'part.pdparams'))
    with pytest.raises(KeyError, match=r'the file lacks 5 of the model\'s 6 weights \(0.bias, 1.weight, '):
        checkpoint.load_model_weights(fresh, str(tmp_path / 'part.pdparams'))


def test_backbone_imagenet_weights_are_read_safely(tmp_path):
    """`pretrained:` of the Swin / FocalNet backbones (a URL or a file) goes through the same loader."""
    from ppdet_rtdetr.modeling.pretrained import load_backbone_pretrained

    layer, _ = _trained_layer_and_optimizer()
    path = str(tmp_path / 'imagenet.pdparams')
    paddle.save(layer.state_dict(), path)
    fresh, _ = _trained_layer_and_optimizer(seed=2)
    load_backbone_pretrained(fresh, path, 'SwinTransformer.pretrained')
    assert all(np.array_equal(fresh.state_dict()[k].numpy(), v.numpy()) for k, v in layer.state_dict().items())
    marker = tmp_path / 'marker'
    write_pickle(path, {'0.weight': Call('posix', 'system', 'touch ' + str(marker))}, 2)
    with pytest.raises(safe_load.UnsafeWeightsError, match='^{}: refused to load'.format(path)):
        load_backbone_pretrained(fresh, path, 'SwinTransformer.pretrained')
    assert not marker.exists()


def test_a_truncated_or_foreign_file_names_the_file(tmp_path):
    layer, _ = _trained_layer_and_optimizer()
    path = str(tmp_path / 'model.pdparams')
    paddle.save({'w': paddle.zeros([300])}, path, protocol=2)  # protocol 2: the data's length comes first
    with open(path, 'rb') as f:
        whole = f.read()
    for name, content, why in (('truncated.pdparams', whole[:60], 'Corrupt: truncated: the file ended inside a line'),
                               ('cut.pdparams', whole[:-40], r'Corrupt: truncated: an entry needs \d+ bytes'),
                               ('text.pdparams', b'not a pickle\n', r'Corrupt: byte 0x6e is not a pickle opcode'),
                               ('empty.pdparams', b'', 'Corrupt: truncated: an entry needs 1 bytes where 0')):
        bad = str(tmp_path / name)
        with open(bad, 'wb') as f:
            f.write(content)
        with pytest.raises(safe_load.WeightsFileError, match='^{}: not a readable Paddle weights file, truncated '
                                                             'or corrupt \\({}'.format(re.escape(bad), why)):
            safe_load.load(bad)
    with pytest.raises(safe_load.WeightsFileError, match='^{}: cannot read the weights file'.format(path + '.x')):
        safe_load.load(path + '.x')


def test_the_opt_out_hands_a_trusted_file_to_paddle_load_with_a_warning(tmp_path, monkeypatch):
    from ppdet.core.workspace import global_config

    marker = tmp_path / 'marker'
    path = str(tmp_path / 'legacy.pdparams')
    write_pickle(path, {'w': np.ones(2), 'trusted': Call('posix', 'system', 'touch ' + str(marker))}, 4)
    monkeypatch.setitem(global_config, safe_load.CONFIG_KEY, True)
    with LogRecords(safe_load.__name__) as logs:
        state = safe_load.load(path)
    assert marker.exists() and state['trusted'] == 0  # os.system's exit status: paddle.load ran it
    assert logs.messages == [('WARNING', '{}: loading with unrestricted pickle because allow_unsafe_weights is set, '
                                         'although its pickle names the global posix.system: paddle.load can run '
                                         'any code. Do this only for a file you trust.'.format(path))]

    monkeypatch.setitem(global_config, safe_load.CONFIG_KEY, 'yes')
    with pytest.raises(ValueError, match=r"^allow_unsafe_weights: 'yes' in the config is not true or false$"):
        safe_load.load(path)
    # an explicit argument wins over the config
    os.remove(str(marker))
    monkeypatch.setitem(global_config, safe_load.CONFIG_KEY, True)
    with pytest.raises(safe_load.UnsafeWeightsError):
        safe_load.load(path, allow_unsafe=False)
    assert not marker.exists()
