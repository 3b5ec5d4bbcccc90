"""Checkpoints you can trust: each checkpoint's manifest records its files' sizes and sha256; a damaged file is
named, never loaded; -r FOLDER takes the highest recorded epoch (not the newest file) and skips a damaged
checkpoint with a warning; checkpoints written before manifests still resume."""
import hashlib
import importlib.util
import json
import os
import shutil

import numpy as np
import paddle
import pytest

from conftest import ROOT, TINY_CFG, fresh_config
from helpers.data_cases import LogRecords, checkpoint_files

from ppdet_rtdetr.engine import checkpoint, pretrain


def _layer_and_optimizer(value):
    layer = paddle.nn.Linear(64, 64)  # 16 KB of weights: room for 4 KB of damage in the middle
    layer.weight.set_value(paddle.full([64, 64], value))
    return layer, paddle.optimizer.SGD(parameters=layer.parameters())


def _save(folder, name, epoch, value=1., **kwargs):
    layer, optimizer = _layer_and_optimizer(value)
    checkpoint.save_model(layer.state_dict(), optimizer, str(folder), name, epoch, **kwargs)
    return str(folder / name)


def _damage(path):
    """4 KB of 0xFF written over the middle of the file (its size stays)."""
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(size // 2 - 2048)
        f.write(b'\xff' * 4096)


def _convert(src, dst):
    """tools/convert_weights.py's convert(src, dst)."""
    spec = importlib.util.spec_from_file_location('convert_weights', os.path.join(ROOT, 'tools', 'convert_weights.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.convert(src, dst)


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize('fmt, names', [('pdparams', ('3.pdparams', '3.pdema', '3.pdopt')),
                                        ('safetensors', ('3.safetensors', '3.ema.safetensors', '3.opt.safetensors'))])
def test_the_manifest_records_format_epoch_and_each_file(tmp_path, fmt, names):
    layer, optimizer = _layer_and_optimizer(1.)
    checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), '3', 4, ema_model=layer.state_dict(),
                          checkpoint_format=fmt)
    assert checkpoint_files(tmp_path) == sorted(names + ('3.manifest.json',))  # no temporaries left
    with open(tmp_path / '3.manifest.json') as f:
        record = json.load(f)
    files = {role: {'name': name, 'size': os.path.getsize(tmp_path / name), 'sha256': _sha256(tmp_path / name)}
             for role, name in zip(('weights', 'model', 'optimizer'), names)}
    assert record == {'checkpoint_format': fmt, 'last_epoch': 4, 'files': files}


def test_a_damaged_file_is_named_and_never_loaded(tmp_path):
    stem = _save(tmp_path, '3', 4)
    _damage(stem + '.pdparams')
    expected = ('{}.pdparams: damaged: its sha256 differs from the one the checkpoint manifest recorded (same '
                'size: bytes were changed in place)'.format(stem))
    layer, optimizer = _layer_and_optimizer(0.)
    for load in (lambda: checkpoint.resume_path(stem),  # -r naming it: an error, no fallback
                 lambda: checkpoint.resume_path(stem + '.pdopt'),
                 lambda: checkpoint.load_checkpoint(layer, stem, optimizer),
                 lambda: checkpoint.load_model_weights(layer, stem),  # export / weights:
                 lambda: pretrain.load_pretrain_weight(layer, stem + '.pdparams'),
                 lambda: _convert(stem + '.pdparams', str(tmp_path / 'shared.safetensors'))):
        with pytest.raises(checkpoint.DamagedCheckpointError) as error:
            load()
        assert str(error.value) == expected
    np.testing.assert_array_equal(layer.weight.numpy(), np.zeros([64, 64]))


def test_a_truncated_file_and_a_broken_manifest_are_named(tmp_path):
    stem = _save(tmp_path, '3', 4, checkpoint_format='safetensors')
    size = os.path.getsize(stem + '.opt.safetensors')
    with open(stem + '.opt.safetensors', 'r+b') as f:
        f.truncate(size - 10)
    with pytest.raises(checkpoint.DamagedCheckpointError, match='^{}: damaged: {} bytes, the checkpoint manifest '
                                                                'recorded {}$'.format(stem + '.opt.safetensors',
                                                                                      size - 10, size)):
        checkpoint.resume_path(stem)
    with open(stem + '.manifest.json', 'w') as f:
        f.write('{"checkpoint_format": "safetensors", "last_')
    with pytest.raises(checkpoint.DamagedCheckpointError, match='^{}: not a readable checkpoint manifest'.format(
            stem + '.manifest.json')):
        checkpoint.resume_path(stem)


def test_resume_takes_the_highest_recorded_epoch_whatever_the_file_times(tmp_path):
    """A first run ended with model_final (2 epochs); a longer run on the same folder wrote 3 and 4 (epochs 4
    and 5); then the folder was copied file by file in another order, so the file times say nothing."""
    source = tmp_path / 'run'
    _save(source, 'model_final', 2)
    _save(source, '3', 4, checkpoint_format='safetensors')
    _save(source, '4', 5)
    copy = tmp_path / 'copy'
    copy.mkdir()
    names = sorted(os.listdir(source), reverse=True)  # 4.* first, model_final.* last: the newest files
    for i, name in enumerate(names):
        shutil.copyfile(source / name, copy / name)
        os.utime(copy / name, (1e9 + i, 1e9 + i))
    with LogRecords('ppdet_rtdetr.engine.checkpoint') as log:
        assert checkpoint.resume_path(str(copy)) == str(copy / '4')
    assert log.messages == [('INFO', 'Resuming from {}, the complete checkpoint with the highest recorded epoch '
                                     '(5) in {}'.format(copy / '4', copy))]
    with LogRecords('ppdet_rtdetr.engine.checkpoint') as log:  # naming it without resuming (e.g. on SIGTERM)
        assert checkpoint.resume_path(str(copy), quiet=True) == str(copy / '4')
    assert log.messages == []
    os.remove(copy / '4.manifest.json')  # a crash before the manifest: 4's files are complete, as a legacy pair
    for name in ('4.pdparams', '4.pdopt'):
        os.remove(copy / name)
    assert checkpoint.resume_path(str(copy)) == str(copy / '3')


def test_a_damaged_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path):
    _save(tmp_path, '0', 1, value=1.)
    stem = _save(tmp_path, '1', 2, value=2.)
    _damage(stem + '.pdparams')
    with LogRecords('ppdet_rtdetr.engine.checkpoint') as log:
        assert checkpoint.resume_path(str(tmp_path)) == str(tmp_path / '0')
    damage = '{}.pdparams: damaged: its sha256 differs from the one the checkpoint manifest recorded (same size: ' \
             'bytes were changed in place)'.format(stem)
    assert log.messages == [
        ('WARNING', '--resume {}: skipping checkpoint {}: {}'.format(tmp_path, stem, damage)),
        ('INFO', 'Resuming from {}, the complete checkpoint with the highest recorded epoch (1) in {} (skipped '
                 'damaged: {})'.format(tmp_path / '0', tmp_path, damage))]
    _damage(str(tmp_path / '0.pdparams'))
    with pytest.raises(checkpoint.DamagedCheckpointError, match='^--resume {}: every checkpoint is damaged: '.format(
            tmp_path)):
        checkpoint.resume_path(str(tmp_path))


def test_a_legacy_checkpoint_resumes_and_is_ordered_by_its_epoch(tmp_path):
    """Checkpoints of before (paddle.save, no manifest) among new ones: ordered by N (+1) or, for model_final, by
    the last_epoch in its .pdopt; one info line says no digest was recorded."""
    layer, optimizer = _layer_and_optimizer(5.)
    state = dict(optimizer.state_dict(), last_epoch=7)
    paddle.save(layer.state_dict(), str(tmp_path / 'model_final.pdparams'))
    paddle.save(state, str(tmp_path / 'model_final.pdopt'))
    _save(tmp_path, '5', 6)
    paddle.save(layer.state_dict(), str(tmp_path / '2.pdparams'))
    paddle.save(dict(state, last_epoch=3), str(tmp_path / '2.pdopt'))
    os.utime(tmp_path / 'model_final.pdopt', (1e9, 1e9))  # the oldest file

    with LogRecords('ppdet_rtdetr.engine.checkpoint') as log:
        stem = checkpoint.resume_path(str(tmp_path))
    assert stem == str(tmp_path / 'model_final')
    assert log.messages[0] == ('INFO', '{}: no digest was recorded (a checkpoint written before manifests), so it '
                                       'is used unverified'.format(stem))
    fresh, fresh_optimizer = _layer_and_optimizer(0.)
    assert checkpoint.load_checkpoint(fresh, stem, fresh_optimizer) == 7
    np.testing.assert_array_equal(fresh.weight.numpy(), np.full([64, 64], 5., 'float32'))
    os.remove(tmp_path / 'model_final.pdopt')
    assert checkpoint.resume_path(str(tmp_path)) == str(tmp_path / '5')  # epoch 6 (manifest) beats 2 (name: 3)


def test_best_model_weights_are_verified_when_it_has_a_manifest(tmp_path):
    stem = _save(tmp_path, 'best_model', 3, checkpoint_format='safetensors')
    layer, _ = _layer_and_optimizer(0.)
    pretrain.load_pretrain_weight(layer, stem)  # weights: path/best_model -> its manifest's weights file
    np.testing.assert_array_equal(layer.weight.numpy(), np.ones([64, 64]))
    with pytest.raises(checkpoint.IncompleteCheckpointError):  # best_model is not a resume point
        checkpoint.resume_path(str(tmp_path))
    _damage(stem + '.safetensors')
    with pytest.raises(checkpoint.DamagedCheckpointError, match='^{}.safetensors: damaged'.format(stem)):
        pretrain.load_pretrain_weight(layer, stem)


def test_an_unknown_checkpoint_format_is_refused_at_construction():
    from ppdet_rtdetr.engine import RTDETRTrainer
    cfg = fresh_config(TINY_CFG, checkpoint_format='pickle')
    with pytest.raises(ValueError) as error:
        RTDETRTrainer(cfg, mode='train')
    assert str(error.value) == ("checkpoint_format: 'pickle' is not a checkpoint format; use one of pdparams, "
                                "safetensors")
