"""safe_load.load: pickles that call code are refused before anything runs; genuine Paddle weights files load
exactly as paddle.load gives them (same types, key order, names, dtypes and bytes)."""
import collections
import os
import pickle
import re

import numpy as np
import paddle
import pytest

from helpers.data_cases import LogRecords
from helpers.payloads import Call, payloads, write_pickle

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
    paddle.save(layer.state_dict(), path)
    with open(path, 'rb') as f:
        head = f.read(60)
    for name, content in (('truncated.pdparams', head), ('text.pdparams', b'not a pickle\n')):
        bad = str(tmp_path / name)
        with open(bad, 'wb') as f:
            f.write(content)
        with pytest.raises(safe_load.WeightsFileError, match='^{}: not a readable Paddle weights file'.format(bad)):
            safe_load.load(bad)


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
