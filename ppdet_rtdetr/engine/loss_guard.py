"""What ``RTDETRTrainer`` does on a non-finite (NaN / inf) training loss.

ppdet 2.6.0's Trainer keeps stepping on a NaN / inf loss: the optimizer writes NaN into every weight, the
log shows ``loss: nan`` for the rest of the run, and every later checkpoint is garbage. The guard is a
forward post-hook on the model, installed for the duration of ``RTDETRTrainer.train``: it reads the training
loss of each step (one device sync, which ppdet's own logging does anyway).

* Without AMP it raises ``NonFiniteLossError`` before ``backward`` and the optimizer step, naming the step and
  every loss part. Checkpoints are only written at epoch ends, so none is written for the failing epoch.
* With AMP (``--amp``) a float16 overflow is expected now and then, and ppdet's ``GradScaler`` skips such a
  step (its gradients are not finite) and lowers the loss scale. The guard then only counts: each
  non-finite loss logs a warning naming the step and the loss parts, a finite one resets the count, and
  ``nonfinite_loss_patience`` (config key, default ``DEFAULT_PATIENCE``) consecutive ones raise
  ``NonFiniteLossError``. Where Paddle turns the scaler off (it only runs on GPU / XPU / custom devices,
  ppdet enables it on GPU / NPU / MLU), ``StepGate`` skips the optimizer step as the scaler would: when a
  gradient is not finite.

``stop_on_nonfinite_loss: false`` in the config turns the guard off (ppdet's behaviour). Under data parallel
training each rank checks its own loss; the failing rank's error ends the run (the launcher stops the
others). The gradients a ``StepGate`` checks are the all-reduced ones, so every rank skips the same steps.
"""
import functools
import math

import paddle

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['DEFAULT_PATIENCE', 'NonFiniteLossError', 'LossGuard', 'StepGate', 'check_loss', 'check_patience',
           'describe']

DEFAULT_PATIENCE = 10  # consecutive non-finite losses an AMP run tolerates (config: nonfinite_loss_patience)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step and the loss parts."""


def _value(tensor):
    return float(tensor.numpy().reshape(-1)[0]) if hasattr(tensor, 'numpy') else float(tensor)


def describe(outputs, status):
    """'Non-finite loss nan at epoch 0, step 2/4 (iteration 3): non-finite parts: ...; finite parts: ...'.

    Args:
        outputs (dict[str, Tensor]): the model's training outputs: ``loss`` and its parts (``loss_*``),
            each a one-element tensor.
        status (dict): ppdet's ``Trainer.status``: ``epoch_id``, ``step_id`` and ``steps_per_epoch``.
    """
    epoch, step, steps = status['epoch_id'], status['step_id'], status['steps_per_epoch']
    parts = {k: _value(v) for k, v in outputs.items() if k != 'loss' and k.startswith('loss')}
    bad = ', '.join('{}={}'.format(k, v) for k, v in parts.items() if not math.isfinite(v)) or 'none'
    good = ', '.join('{}={:.6g}'.format(k, v) for k, v in parts.items() if math.isfinite(v)) or 'none'
    return 'Non-finite loss {} at epoch {}, step {}/{} (iteration {}): non-finite parts: {}; finite parts: {}'.format(
        _value(outputs['loss']), epoch, step, steps, epoch * steps + step + 1, bad, good)


def check_loss(outputs, status):
    """Raises ``NonFiniteLossError`` when ``outputs['loss']`` is not finite (the guard without AMP)."""
    if math.isfinite(_value(outputs['loss'])):
        return
    raise NonFiniteLossError(
        describe(outputs, status) + '. Training stopped before the optimizer step; no checkpoint was written '
        'for this epoch. Check the data (tools/check_dataset.py), lower the learning rate, or train without '
        '--amp.')


def check_patience(patience):
    """Raises ValueError unless ``patience`` (config ``nonfinite_loss_patience``) is an integer >= 1."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError('nonfinite_loss_patience must be an integer >= 1, got {!r}'.format(patience))


class LossGuard(object):
    """The forward post-hook of the module docstring, on one trainer's model.

    Args:
        trainer (ppdet.engine.Trainer): its ``model`` is hooked, its ``status`` names the step.
        patience (int|None): None stops at the first non-finite loss (no AMP); an int >= 1 is the number of
            consecutive non-finite losses that stop an AMP run (each one before logs a warning).
    """

    def __init__(self, trainer, patience=None):
        if patience is not None:
            check_patience(patience)
        self.status, self.patience, self.streak = trainer.status, patience, 0
        self._handle = trainer.model.register_forward_post_hook(self._check)

    def remove(self):
        self._handle.remove()

    def _check(self, layer, inputs, outputs):
        if not (layer.training and isinstance(outputs, dict) and 'loss' in outputs):
            return
        if self.patience is None:
            check_loss(outputs, self.status)
            return
        if math.isfinite(_value(outputs['loss'])):
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= self.patience:
            raise NonFiniteLossError(
                '{}. That is {} non-finite losses in a row (nonfinite_loss_patience: {}): training stopped '
                'before the optimizer step; no checkpoint was written for this epoch. Check the data '
                '(tools/check_dataset.py), lower the learning rate, or train without --amp.'.format(
                    describe(outputs, self.status), self.streak, self.patience))
        logger.warning('{}. Skipping this step as the AMP loss scaler does ({} of {} in a row before training '
                       'stops, nonfinite_loss_patience).'.format(describe(outputs, self.status), self.streak,
                                                                 self.patience))


def _all_finite(parameters):
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    # one device sync for all gradients
    return bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all())


class StepGate(object):
    """Skips the optimizer step when a gradient is not finite, as an enabled ``GradScaler`` does.

    Installed on one optimizer object (its ``step`` and ``minimize``, which the scaler calls) for the AMP
    runs where Paddle disables the scaler; ``remove()`` restores the optimizer's own methods.

    Args:
        optimizer (paddle.optimizer.Optimizer): the trainer's optimizer.
        parameters (list[Tensor]): the parameters whose gradients are checked (the model's).
    """

    def __init__(self, optimizer, parameters):
        self.optimizer, self.parameters, self.skipped = optimizer, list(parameters), 0
        for name, skipped in (('step', None), ('minimize', (None, None))):
            setattr(optimizer, name, self._gated(getattr(optimizer, name), skipped))

    def _gated(self, method, skipped):
        @functools.wraps(method)
        def gated(*args, **kwargs):
            if _all_finite(self.parameters):
                return method(*args, **kwargs)
            self.skipped += 1
            return skipped

        return gated

    def remove(self):
        # the gates are instance attributes: deleting them uncovers the class's methods
        for name in ('step', 'minimize'):
            self.optimizer.__dict__.pop(name, None)
