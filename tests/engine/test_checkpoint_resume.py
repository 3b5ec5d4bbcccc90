"""Atomic checkpoints: a run that dies while saving leaves the previous checkpoint loadable, and --resume
continues from the newest complete one (RTDETRTrainer)."""
import os

import numpy as np
import paddle
import pytest

from helpers.data_cases import checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine import checkpoint


class SimulatedCrash(OSError):
    pass


def _crash_when_renaming(monkeypatch, suffix):
    """os.replace raises for destinations ending in `suffix`: the process "dies" between write and rename."""
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(suffix):
            raise SimulatedCrash('killed while renaming {}'.format(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, 'replace', replace)


def _layer_and_optimizer(value):
    layer = paddle.nn.Linear(2, 2)
    layer.weight.set_value(paddle.full([2, 2], value))
    return layer, paddle.optimizer.SGD(parameters=layer.parameters())


def test_crash_while_overwriting_keeps_the_old_files(tmp_path, monkeypatch):
    layer, optimizer = _layer_and_optimizer(1.)
    checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), 'model_final', 3)
    layer.weight.set_value(paddle.full([2, 2], 2.))
    _crash_when_renaming(monkeypatch, 'model_final.pdparams')
    with pytest.raises(SimulatedCrash):
        checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), 'model_final', 4)

    assert checkpoint_files(tmp_path) == ['model_final.manifest.json', 'model_final.pdopt',
                                         'model_final.pdparams']  # no temporaries left
    np.testing.assert_array_equal(paddle.load(str(tmp_path / 'model_final.pdparams'))['weight'].numpy(),
                                  np.ones([2, 2]))
    assert paddle.load(str(tmp_path / 'model_final.pdopt'))['last_epoch'] == 3


def test_a_checkpoint_without_its_pdopt_is_not_a_resume_point(tmp_path, monkeypatch):
    layer, optimizer = _layer_and_optimizer(1.)
    checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), '0', 1)
    _crash_when_renaming(monkeypatch, '1.pdopt')  # .pdparams is renamed, the run dies before .pdopt
    with pytest.raises(SimulatedCrash):
        checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), '1', 2)

    assert checkpoint_files(tmp_path) == ['0.manifest.json', '0.pdopt', '0.pdparams', '1.pdparams']
    assert checkpoint.resume_path(str(tmp_path)) == str(tmp_path / '0')
    with pytest.raises(checkpoint.IncompleteCheckpointError) as error:
        checkpoint.resume_path(str(tmp_path / '1'))
    assert str(error.value) == ('--resume {0}/1: {0}/1.pdopt missing, so the checkpoint is incomplete. Resume '
                                'from its folder to take the newest complete checkpoint.'.format(tmp_path))


def test_an_empty_folder_is_not_a_resume_point(tmp_path):
    with pytest.raises(checkpoint.IncompleteCheckpointError) as error:
        checkpoint.resume_path(str(tmp_path))
    assert str(error.value) == ('--resume {}: no complete checkpoint (N.pdparams with N.pdopt, N.safetensors with '
                                'N.opt.safetensors, or model_final) in this folder'.format(tmp_path))


def test_training_killed_while_saving_resumes_from_the_previous_epoch(tmp_path, monkeypatch):
    """Epoch 0 is saved as `0`; the run dies renaming epoch 1's `model_final`; resume trains epoch 1 again."""
    from ppdet_rtdetr.engine import RTDETRTrainer as Trainer
    data = make_shapes(tmp_path / 'data')  # 3 usable train images: one step per epoch
    save_dir = tmp_path / 'out'
    run_dir = save_dir / 'rtdetr_tiny'
    cfg = light_config(save_dir, data, epoch=2)
    _crash_when_renaming(monkeypatch, 'model_final.pdparams')
    # Optimizer states are keyed by generated parameter and accumulator names (the accumulators are named at
    # the first step); a fresh name scope gives the second run the first one's names, as a new process (the
    # real resume) does, whatever other tests of this process created before.
    with pytest.raises(SimulatedCrash), paddle.utils.unique_name.guard():
        Trainer(cfg, mode='train').train()
    assert checkpoint_files(save_dir) == ['rtdetr_tiny/0.manifest.json', 'rtdetr_tiny/0.pdopt', 'rtdetr_tiny/0.pdparams']
    monkeypatch.undo()

    cfg = light_config(save_dir, data, epoch=2)
    with paddle.utils.unique_name.guard():
        trainer = Trainer(cfg, mode='train')
    trainer.resume_weights(str(run_dir))  # the folder: its newest complete checkpoint
    assert trainer.start_epoch == 1
    saved = paddle.load(str(run_dir / '0.pdparams'))
    for key, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[key].numpy(), err_msg=key)
    with paddle.utils.unique_name.guard():
        trainer.train()
    assert checkpoint_files(save_dir) == ['rtdetr_tiny/0.manifest.json', 'rtdetr_tiny/0.pdopt', 'rtdetr_tiny/0.pdparams',
                                          'rtdetr_tiny/model_final.manifest.json', 'rtdetr_tiny/model_final.pdopt',
                                          'rtdetr_tiny/model_final.pdparams']
    assert paddle.load(str(run_dir / 'model_final.pdopt'))['last_epoch'] == 2
