"""Training hooks for ppdet's Trainer, installed when ``ppdet_rtdetr`` is imported (the Trainer is not forked).

Each hook replaces one name ppdet 2.6.0's Trainer looks up and keeps its signature:

* ``ppdet.engine.trainer.load_pretrain_weight`` (called by ``Trainer.load_weights`` for ``pretrain_weights``,
  and for ``weights`` in eval / infer) -> ``pretrain.load_pretrain_weight``: fine-tuning to another
  ``num_classes`` skips the class head with one listing; a file of another architecture is an error;
* ``ppdet.engine.trainer.load_weight`` (called by ``Trainer.resume_weights``) -> ``checkpoint.load_weight``:
  model, optimizer and EMA files read with ``safe_load.load`` (a pickle that is not only data is refused);
* ``ppdet.engine.callbacks.save_model`` (the ``Checkpointer``) -> ``checkpoint.save_model``: atomic writes;
* ``Trainer.resume_weights`` resolves ``--resume`` with ``checkpoint.resume_path`` (a folder means its
  newest complete checkpoint), then runs ppdet's;
* ``Trainer.train`` runs ppdet's with ``loss_guard`` hooked into the model; ``stop_on_nonfinite_loss: false``
  in the config turns the guard off.

``install()`` is idempotent; a wrapped method keeps ppdet's as ``__wrapped__``.
"""
import functools

from ppdet.engine import callbacks as ppdet_callbacks
from ppdet.engine import trainer as ppdet_trainer

from . import checkpoint, loss_guard, pretrain

__all__ = ['install']


def _resume_from_resolved_path(resume_weights):
    @functools.wraps(resume_weights)
    def wrapper(self, weights):
        return resume_weights(self, checkpoint.resume_path(weights))

    return wrapper


def _train_with_loss_guard(train):
    @functools.wraps(train)
    def wrapper(self, *args, **kwargs):
        if not self.cfg.get('stop_on_nonfinite_loss', True):
            return train(self, *args, **kwargs)
        handle = loss_guard.install(self)
        try:
            return train(self, *args, **kwargs)
        finally:
            handle.remove()

    return wrapper


def install():
    """Install every hook of the table above (idempotent)."""
    ppdet_trainer.load_pretrain_weight = pretrain.load_pretrain_weight
    ppdet_trainer.load_weight = checkpoint.load_weight
    ppdet_callbacks.save_model = checkpoint.save_model
    trainer = ppdet_trainer.Trainer
    if not hasattr(trainer.resume_weights, '__wrapped__'):
        trainer.resume_weights = _resume_from_resolved_path(trainer.resume_weights)
    if not hasattr(trainer.train, '__wrapped__'):
        trainer.train = _train_with_loss_guard(trainer.train)


install()
