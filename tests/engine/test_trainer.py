"""RTDETRTrainer against ppdet's own Trainer pieces: the same checkpoints saved at the same epochs, the same state
restored on resume, and frozen norms kept frozen by the sync-BN conversion."""
import types

import numpy as np
import paddle
import pytest

from ppdet.core.workspace import AttrDict
from ppdet.engine import Trainer, callbacks
from ppdet.optimizer import ModelEMA
from ppdet.utils.checkpoint import load_weight

from ppdet_rtdetr.engine import RTDETRTrainer, checkpoint, checkpointer
from ppdet_rtdetr.engine.trainer import convert_sync_batchnorm_keeping_frozen

APS = [0.1, 0.3, 0.2, 0.3]  # bbox AP after epochs 0..3: best_model at 0, 1 and 3 (ppdet saves on >=)


class _Metric(object):
    def __init__(self):
        self.ap = None

    def get_results(self):
        return {'bbox': [self.ap]}


def _recorder(calls):
    # ours also passes checkpoint_format (the default here), which ppdet's save_model has not
    def save_model(model, optimizer, save_dir, save_name, last_epoch, ema_model=None, checkpoint_format='pdparams'):
        assert checkpoint_format == 'pdparams'
        calls.append((sorted(model) if isinstance(model, dict) else model, save_dir, save_name, last_epoch,
                      None if ema_model is None else sorted(ema_model)))

    return save_model


def _run_epochs(checkpointer_class, use_ema):
    """The save calls of `checkpointer_class` over 4 epochs (snapshot_epoch 2), each followed by an evaluation."""
    metric = _Metric()
    trainer = types.SimpleNamespace(
        cfg=AttrDict(save_dir='out', filename='tiny', epoch=4, snapshot_epoch=2), model=paddle.nn.Linear(2, 2),
        use_ema=use_ema, optimizer='the optimizer', _metrics=[metric])
    callback = checkpointer_class(trainer)
    for epoch, ap in enumerate(APS):
        callback.on_epoch_end({'mode': 'train', 'epoch_id': epoch, 'weight': 'trained weights'})
        metric.ap = ap
        callback.on_epoch_end({'mode': 'eval', 'epoch_id': epoch, 'weight': 'trained weights',
                               'save_best_model': True})
    return callback


@pytest.mark.parametrize('use_ema', [False, True])
def test_atomic_checkpointer_saves_what_ppdets_checkpointer_saves(monkeypatch, use_ema):
    theirs, ours = [], []
    monkeypatch.setattr(callbacks, 'save_model', _recorder(theirs))
    monkeypatch.setattr(checkpointer, 'save_model', _recorder(ours))
    their_best = _run_epochs(callbacks.Checkpointer, use_ema).best_ap
    our_best = _run_epochs(checkpointer.AtomicCheckpointer, use_ema).best_ap

    names = [(name, epoch) for _, _, name, epoch, _ in theirs]
    assert names == [('best_model', 1), ('1', 2), ('best_model', 2), ('model_final', 4), ('best_model', 4)]
    assert ours == theirs and our_best == their_best == 0.3
    assert all((ema is not None) == use_ema for _, _, _, _, ema in ours)
    if use_ema:  # the trained weights go to .pdema, the EMA ones (in the model at epoch end) to .pdparams
        assert {model for model, _, _, _, _ in ours} == {'trained weights'}


def _training_state(seed):
    """A model, its AdamW with a scheduler, and its EMA after two steps (parameter names fixed by the guard)."""
    with paddle.utils.unique_name.guard():
        paddle.seed(seed)
        model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4), paddle.nn.Linear(4, 2))
        schedule = paddle.optimizer.lr.StepDecay(0.01, step_size=1, gamma=0.5)
        optimizer = paddle.optimizer.AdamW(schedule, parameters=model.parameters())
        ema = ModelEMA(model, decay=0.9)
        for _ in range(2):  # the optimizer names its accumulators at its first step
            model(paddle.rand([5, 3])).sum().backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            ema.update()
    return model, optimizer, ema


def _numpy(state):
    return {k: np.asarray(v.numpy() if hasattr(v, 'numpy') else v) for k, v in state.items()
            if hasattr(v, 'numpy')}


def test_resume_restores_what_ppdets_load_weight_restores(tmp_path):
    model, optimizer, ema = _training_state(seed=1)
    checkpoint.save_model(model.state_dict(), optimizer, str(tmp_path), '1', 2, ema_model=ema.apply())

    restored = {}
    for name, load in (('ours', checkpoint.load_checkpoint), ('ppdet', load_weight)):
        fresh_model, fresh_optimizer, fresh_ema = _training_state(seed=2)
        epoch = load(fresh_model, str(tmp_path / '1'), fresh_optimizer, fresh_ema)
        restored[name] = (epoch, _numpy(fresh_model.state_dict()), _numpy(fresh_optimizer.state_dict()),
                          _numpy(fresh_ema.state_dict), fresh_ema.step)
    ours, theirs = restored['ours'], restored['ppdet']
    assert ours[0] == theirs[0] == 2 and ours[4] == theirs[4] == 2
    for got, want in zip(ours[1:4], theirs[1:4]):
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # and what was restored is the saved run's: the trained weights, not the EMA ones
    for key, value in _numpy(model.state_dict()).items():
        np.testing.assert_array_equal(ours[1][key], value, err_msg=key)


def test_resume_names_the_weights_a_checkpoint_lacks(tmp_path):
    model, optimizer, _ = _training_state(seed=1)
    state = model.state_dict()
    del state['2.bias']
    checkpoint.save_model(state, optimizer, str(tmp_path), '0', 1)
    with pytest.raises(KeyError, match=r"the checkpoint lacks 1 of the model's 8 weights \(2\.bias\): it was not "
                                       r"written for this config"):
        checkpoint.load_checkpoint(model, str(tmp_path / '0'), optimizer)


def _norms():
    return paddle.nn.Sequential(paddle.nn.BatchNorm2D(4, use_global_stats=True), paddle.nn.BatchNorm2D(4))


def test_sync_bn_conversion_keeps_frozen_norms():
    # Paddle's own conversion turns the frozen norm into a SyncBatchNorm, losing use_global_stats
    plain = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(_norms())
    assert isinstance(plain[0], paddle.nn.SyncBatchNorm)
    converted = convert_sync_batchnorm_keeping_frozen(_norms())
    assert type(converted[0]) is paddle.nn.BatchNorm2D and converted[0]._use_global_stats is True
    assert isinstance(converted[1], paddle.nn.SyncBatchNorm)


def test_train_converts_before_ppdet_and_hides_sync_bn_from_it(monkeypatch):
    """ppdet's train() (spied) must find the model converted and norm_type off, or it converts the frozen norm."""
    seen = []

    def ppdet_train(self, validate=False):
        seen.append((self.cfg.norm_type, [type(layer).__name__ for layer in self.model]))

    monkeypatch.setattr(Trainer, 'train', ppdet_train)
    trainer = RTDETRTrainer.__new__(RTDETRTrainer)
    trainer.cfg = AttrDict(norm_type='sync_bn', use_gpu=True, stop_on_nonfinite_loss=False)
    trainer.model, trainer._nranks = _norms(), 2
    trainer.train()
    assert seen == [('bn', ['BatchNorm2D', 'SyncBatchNorm'])]
    assert trainer.cfg.norm_type == 'sync_bn', 'the config must be restored'

    trainer.model, trainer._nranks = _norms(), 1  # one process: nothing to convert, as in ppdet
    trainer.train()
    assert seen[1] == ('sync_bn', ['BatchNorm2D', 'BatchNorm2D'])
