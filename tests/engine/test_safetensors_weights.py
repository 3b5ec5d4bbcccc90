"""Safetensors as a weights and checkpoint format: states round-trip with their types, weights / pretrain_weights /
export read .safetensors, tools/convert_weights.py converts both ways byte-equal and refuses unsafe pickles, and a
training resumed from a safetensors checkpoint continues exactly as one resumed from the same .pdparams one."""
import importlib.util
import os

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file as numpy_load_file

from conftest import ROOT, TINY_CFG, build_from_config
from helpers.data_cases import LIGHT, checkpoint_files, light_config, make_shapes
from helpers.payloads import payloads, write_pickle

from ppdet_rtdetr.engine import checkpoint, pretrain, safe_load, safetensors_state
from ppdet_rtdetr.engine.seed import seed_everything


def _convert_main():
    spec = importlib.util.spec_from_file_location('convert_weights', os.path.join(ROOT, 'tools', 'convert_weights.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _optimizer_state():
    """An AdamW state after one step with an LR scheduler, plus what other optimizers / ppdet put beside it."""
    layer = paddle.nn.Linear(3, 2)
    scheduler = paddle.optimizer.lr.PiecewiseDecay([2], [0.1, 0.01])
    optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=layer.parameters())
    layer(paddle.ones([1, 3])).sum().backward()
    optimizer.step()
    scheduler.step()
    state = optimizer.state_dict()
    state['master_weights'] = {p.name: p.astype('float32') for p in layer.parameters()}
    state['last_epoch'] = 7
    state['extra'] = [np.float32(0.25), np.int64(3), (1, 'a', None, True, 1.5e-300), np.arange(4, dtype='float16')]
    return state


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def test_an_optimizer_state_keeps_its_types_and_round_trips_byte_equal(tmp_path):
    pdopt, st, back = (str(tmp_path / n) for n in ('a.pdopt', 'a.safetensors', 'b.pdopt'))
    paddle.save(_optimizer_state(), pdopt)
    assert _convert_main()([pdopt, st]) == 0 and _convert_main()([st, back]) == 0
    assert _bytes(back) == _bytes(pdopt)

    original, loaded = safe_load.load(pdopt), safetensors_state.load(st)
    assert list(loaded) == list(original)
    assert loaded['LR_Scheduler'] == {'last_epoch': 1, 'last_lr': 0.1} and loaded['last_epoch'] == 7
    assert [type(v) for v in loaded['extra'][:3]] == [np.float32, np.int64, tuple]
    assert loaded['extra'][:3] == original['extra'][:3]
    assert loaded['extra'][3].dtype == np.float16 and isinstance(loaded['extra'][3], np.ndarray)
    for key, value in original.items():
        if isinstance(value, paddle.Tensor):
            assert loaded[key].name == value.name
            np.testing.assert_array_equal(loaded[key].numpy(), value.numpy(), err_msg=key)
    # any safetensors reader sees the tensors under their key paths
    assert sorted(numpy_load_file(st)) == sorted([k for k, v in original.items() if isinstance(v, paddle.Tensor)]
                                                  + ['master_weights/' + k for k in original['master_weights']]
                                                  + ['extra/3'])


@pytest.mark.parametrize('suffix', ['.pdparams', '.pdema'])
def test_weights_with_bf16_and_fp16_round_trip_byte_equal(tmp_path, suffix):
    layer = paddle.nn.Linear(4, 3)
    state = {'weight': layer.weight.astype('bfloat16'), 'bias': layer.bias.astype('float16'),
             'steps': paddle.to_tensor([5], 'int64')}
    for key, value in state.items():
        value.name = 'layer.' + key
    src, st, back = str(tmp_path / ('w' + suffix)), str(tmp_path / 'w.safetensors'), str(tmp_path / ('v' + suffix))
    paddle.save(state, src)
    assert _convert_main()([src, st]) == 0 and _convert_main()([st, back]) == 0
    assert _bytes(back) == _bytes(src)
    loaded = safetensors_state.load(st)
    assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in state.items()}
    for key, value in state.items():  # bf16 compared bit by bit
        assert loaded[key].view('int16' if value.element_size() == 2 else value.dtype).numpy().tobytes() == \
            value.view('int16' if value.element_size() == 2 else value.dtype).numpy().tobytes(), key


def test_the_converter_refuses_an_unsafe_pickle_and_names_the_file(tmp_path, capsys):
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'shared.pdparams')
    payload, reported = payloads(marker)['os.system']
    write_pickle(path, {'w': np.zeros([2], 'float32'), 'x': payload}, 4)
    assert _convert_main()([path, str(tmp_path / 'shared.safetensors')]) == 1
    assert capsys.readouterr().err.startswith('error: {}: refused to load: its pickle names the global {}'.format(
        path, reported))
    assert not marker.exists() and not (tmp_path / 'shared.safetensors').exists()
    assert checkpoint_files(tmp_path) == ['shared.pdparams']  # no temporary left

    assert _convert_main()([path, str(tmp_path / 'x.pdopt')]) == 1
    assert capsys.readouterr().err == ('error: {} -> {}: convert a .pdparams / .pdema / .pdopt file to .safetensors, '
                                       'or back (the suffixes choose the format)\n'.format(path, tmp_path / 'x.pdopt'))
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": ')
    assert _convert_main()([str(broken), str(tmp_path / 'b.pdparams')]) == 1
    assert capsys.readouterr().err.startswith('error: {}: not a readable safetensors file'.format(broken))


def test_a_foreign_metadata_tree_is_refused_naming_the_file(tmp_path):
    from safetensors.paddle import save_file
    path = str(tmp_path / 'odd.safetensors')
    save_file({'a': paddle.ones([2])}, path, metadata={safetensors_state.TREE_KEY: '{"dict": [["a", {"tensor": "a"}],'
                                                                                    ' ["b", {"tensor": "a"}]]}'})
    with pytest.raises(safe_load.WeightsFileError, match="^{}: not a valid ppdet_rtdetr.tree entry in the safetensors "
                                                         "metadata \\(tensor 'a' is not in the file, or is used twice"
                                                         "\\)$".format(path)):
        safetensors_state.load(path)
    plain = str(tmp_path / 'plain.safetensors')
    save_file({'b': paddle.full([2], 2.), 'a': paddle.ones([3], 'bfloat16')}, plain)  # written elsewhere
    loaded = safetensors_state.load(plain)
    assert {k: (v.dtype, v.shape) for k, v in loaded.items()} == {'a': (paddle.bfloat16, [3]),
                                                                  'b': (paddle.float32, [2])}


def test_weights_pretrain_and_export_read_safetensors(tmp_path):
    paddle.seed(3)
    source = build_from_config(TINY_CFG, **LIGHT)
    path = str(tmp_path / 'shared.safetensors')
    safetensors_state.save(source.state_dict(), path)
    expected = {k: v.numpy() for k, v in source.state_dict().items()}
    for load, weights in ((pretrain.load_pretrain_weight, path),  # pretrain_weights / weights (eval, infer)
                          (pretrain.load_pretrain_weight, str(tmp_path / 'shared')),  # without the suffix
                          (checkpoint.load_model_weights, path)):  # export_model
        paddle.seed(4)
        model = build_from_config(TINY_CFG, **LIGHT)
        load(model, weights)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=key)


def _train(cfg, resume=None):
    """Trains ``cfg`` from seed 0 (resuming from checkpoint ``resume``); returns the trainer."""
    from ppdet_rtdetr.engine import RTDETRTrainer
    seed_everything(0)
    # a fresh name scope gives every run the same parameter / accumulator names, as a new process would
    with paddle.utils.unique_name.guard():
        trainer = RTDETRTrainer(cfg, mode='train')
        if resume:
            trainer.resume_weights(resume)
        trainer.train()
    return trainer


def test_a_safetensors_checkpoint_resumes_exactly_like_the_pdparams_one(tmp_path):
    """Two seeded one-epoch runs with EMA, one saving .pdparams / .pdema / .pdopt (paddle.save, read back by the
    pickle loader), one saving safetensors; the second epoch resumed from each ends with the same weights, EMA
    weights and optimizer state, bit for bit."""
    data = make_shapes(tmp_path / 'data')
    files = {'pdparams': ('.pdparams', '.pdema', '.pdopt'),
             'safetensors': ('.safetensors', '.ema.safetensors', '.opt.safetensors')}
    finals = {}
    for fmt, suffixes in files.items():
        run = tmp_path / fmt / 'rtdetr_tiny'
        _train(light_config(tmp_path / fmt, data, epoch=1, checkpoint_format=fmt, use_ema=True))
        assert checkpoint_files(run) == sorted('model_final' + s for s in suffixes + ('.manifest.json',))
        out = tmp_path / ('resumed_' + fmt)
        trainer = _train(light_config(out, data, epoch=2, checkpoint_format=fmt, use_ema=True), str(run))
        assert trainer.start_epoch == 1
        stem = str(out / 'rtdetr_tiny' / 'model_final')
        finals[fmt] = [checkpoint.read_state(stem + suffix) for suffix in suffixes]
    (st_weights, st_model, st_opt), (pd_weights, pd_model, pd_opt) = finals['safetensors'], finals['pdparams']
    assert list(st_weights) == list(pd_weights) == list(st_model) and list(st_opt) == list(pd_opt)
    for key in st_weights:
        np.testing.assert_array_equal(st_weights[key].numpy(), pd_weights[key].numpy(), err_msg=key)
        np.testing.assert_array_equal(st_model[key].numpy(), pd_model[key].numpy(), err_msg=key)
    assert any(not np.array_equal(st_weights[k].numpy(), st_model[k].numpy()) for k in st_weights), 'EMA = model'
    for key, value in st_opt.items():
        if isinstance(value, paddle.Tensor):
            np.testing.assert_array_equal(value.numpy(), pd_opt[key].numpy(), err_msg=key)
        else:
            assert value == pd_opt[key], key
    assert st_opt['last_epoch'] == 2 and st_opt['LR_Scheduler']['last_epoch'] == pd_opt['LR_Scheduler']['last_epoch']


@pytest.mark.parametrize('tree, why', [
    ('{"dict": [["a", {"numpy_scalar": "|O", "value": 1}]]}', "numpy scalar 1 of dtype '|O'"),
    ('{"dict": [["a", {"numpy_scalar": "|i1", "value": 1000}]]}', '1000 does not fit |i1'),
    ('{"dict": [["a", {"tensor": ["a"]}]]}', "tensor ['a'] is not in the file, or is used twice"),
    ('{"dict": [["a", {"call": "os.system"}]]}', "node {'call': 'os.system'}"),
    ('{"list": [' * 20 + ']}' * 20, 'nested deeper than 16 levels'),
])
def test_metadata_that_save_does_not_write_is_refused(tmp_path, tree, why):
    from safetensors.paddle import save_file
    path = str(tmp_path / 'odd.safetensors')
    save_file({'a': paddle.ones([2])}, path, metadata={safetensors_state.TREE_KEY: tree})
    with pytest.raises(safe_load.WeightsFileError) as error:
        safetensors_state.load(path)
    assert str(error.value) == '{}: not a valid ppdet_rtdetr.tree entry in the safetensors metadata ({})'.format(
        path, why)
