"""What ``RTDETRTrainer`` does on a non-finite (NaN / inf) training loss or prediction.

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

Non-finite predictions are caught where they appear, before the Hungarian matcher (whose scipy solver would
end the run with "matrix contains invalid numeric entries" before any loss exists): a second forward post-hook
on the model's ``transformer`` sub-layer checks its training outputs (every decoder layer's boxes and logits,
the denoising ones, the encoder top-k: ``prediction_check``; one more sync, right before the matcher's own).
Without AMP it raises ``NonFinitePredictionError`` (a ``NonFiniteLossError``) naming the step and the tensors;
with AMP the step counts as a non-finite loss: the head computes it from finite stand-ins (NaN / inf set to 0)
and the loss is made NaN, so the scaler or the step gate skips it and the patience count goes up. A non-finite
cost in the matcher (``NonFiniteCostError``) ends the run as a ``NonFinitePredictionError`` naming the step
(``cost_error``).

``stop_on_nonfinite_loss: false`` in the config turns the guard off (ppdet's behaviour). Under data parallel
training each rank checks its own loss; the failing rank's error ends the run (the launcher stops the
others). The gradients a ``StepGate`` checks are the all-reduced ones, so every rank skips the same steps.
"""
import functools
import math

import paddle

from ppdet.utils.logger import setup_logger

from . import prediction_check

logger = setup_logger(__name__)

__all__ = ['DEFAULT_PATIENCE', 'NonFiniteLossError', 'NonFinitePredictionError', 'LossGuard', 'StepGate',
           'check_loss', 'check_patience', 'cost_error', 'describe', 'step_text']

DEFAULT_PATIENCE = 10  # consecutive non-finite losses an AMP run tolerates (config: nonfinite_loss_patience)
_NO_CHECKPOINT = 'no checkpoint was written for this epoch. '
_ADVICE = 'Check the data (tools/check_dataset.py), lower the learning rate, or train without --amp.'


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step and the loss parts."""


class NonFinitePredictionError(NonFiniteLossError):
    """The predictions (or the matcher's cost) became NaN or inf; the message names the step and the tensors."""


def _value(tensor):
    return float(tensor.numpy().reshape(-1)[0]) if hasattr(tensor, 'numpy') else float(tensor)


def describe(outputs, status):
    """'Non-finite loss nan at epoch 0, step 2/4 (iteration 3): non-finite parts: ...; finite parts: ...'.

    Args:
        outputs (dict[str, Tensor]): the model's training outputs: ``loss`` and its parts (``loss_*``),
            each a one-element tensor.
        status (dict): ppdet's ``Trainer.status``: ``epoch_id``, ``step_id`` and ``steps_per_epoch``.
    """
    parts = {k: _value(v) for k, v in outputs.items() if k != 'loss' and k.startswith('loss')}
    bad = ', '.join('{}={}'.format(k, v) for k, v in parts.items() if not math.isfinite(v)) or 'none'
    good = ', '.join('{}={:.6g}'.format(k, v) for k, v in parts.items() if math.isfinite(v)) or 'none'
    return 'Non-finite loss {} at {}: non-finite parts: {}; finite parts: {}'.format(
        _value(outputs['loss']), step_text(status), bad, good)


def step_text(status):
    """'epoch 0, step 2/4 (iteration 3)' from ppdet's ``Trainer.status`` (``epoch_id``, ``step_id``,
    ``steps_per_epoch``; steps count from 0, iterations from 1)."""
    epoch, step, steps = status['epoch_id'], status['step_id'], status['steps_per_epoch']
    return 'epoch {}, step {}/{} (iteration {})'.format(epoch, step, steps, epoch * steps + step + 1)


def cost_error(error, status):
    """The ``NonFinitePredictionError`` for the matcher's ``NonFiniteCostError`` ``error``, naming the step."""
    return NonFinitePredictionError('Non-finite matching cost at {}: {}. Training stopped before the optimizer step; '
                                    '{}{}'.format(step_text(status), error, _NO_CHECKPOINT, _ADVICE))


def check_loss(outputs, status):
    """Raises ``NonFiniteLossError`` when ``outputs['loss']`` is not finite (the guard without AMP)."""
    if math.isfinite(_value(outputs['loss'])):
        return
    raise NonFiniteLossError(describe(outputs, status) + '. Training stopped before the optimizer step; ' +
                             _NO_CHECKPOINT + _ADVICE)


def check_patience(patience):
    """Raises ValueError unless ``patience`` (config ``nonfinite_loss_patience``) is an integer >= 1."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError('nonfinite_loss_patience must be an integer >= 1, got {!r}'.format(patience))


class LossGuard(object):
    """The forward post-hooks of the module docstring, on one trainer's model and its ``transformer``.

    Args:
        trainer (ppdet.engine.Trainer): its ``model`` is hooked (and its ``model.transformer`` sub-layer, when the
            model has one), its ``status`` names the step.
        patience (int|None): None stops at the first non-finite loss or prediction (no AMP); an int >= 1 is the
            number of consecutive non-finite steps that stop an AMP run (each one before logs a warning).
    """

    def __init__(self, trainer, patience=None):
        if patience is not None:
            check_patience(patience)
        self.status, self.patience, self.streak = trainer.status, patience, 0
        self._bad_predictions = None  # AMP: what the prediction hook found in this step, for the loss hook
        self._handles = [trainer.model.register_forward_post_hook(self._check)]
        transformer = getattr(trainer.model, 'transformer', None)
        if isinstance(transformer, paddle.nn.Layer):
            self._handles.append(transformer.register_forward_post_hook(self._check_predictions))

    def remove(self):
        for handle in self._handles:
            handle.remove()

    def _check_predictions(self, layer, inputs, outputs):
        if not layer.training or prediction_check.all_finite(outputs):
            return None
        text = 'Non-finite predictions at {}: {}'.format(step_text(self.status), prediction_check.report(outputs))
        if self.patience is None:
            raise NonFinitePredictionError(text + '. Training stopped before the matcher and the optimizer step; ' +
                                           _NO_CHECKPOINT + _ADVICE)
        self._bad_predictions = text
        return prediction_check.finite_copy(outputs)

    def _check(self, layer, inputs, outputs):
        if not (layer.training and isinstance(outputs, dict) and 'loss' in outputs):
            return
        bad_predictions, self._bad_predictions = self._bad_predictions, None
        if self.patience is None:
            check_loss(outputs, self.status)
            return
        if bad_predictions is None and math.isfinite(_value(outputs['loss'])):
            self.streak = 0
            return
        if bad_predictions is not None:
            # the loss of the finite stand-ins times NaN: NaN gradients, so the scaler or the step gate skips the
            # step as for any non-finite loss (the trainer reads outputs['loss'] after this hook)
            outputs['loss'] = outputs['loss'] * math.nan
        self.streak += 1
        text = bad_predictions or describe(outputs, self.status)
        if self.streak >= self.patience:
            error = NonFinitePredictionError if bad_predictions else NonFiniteLossError
            raise error('{}. That is {} non-finite steps in a row (nonfinite_loss_patience: {}): training stopped '
                        'before the optimizer step; {}{}'.format(text, self.streak, self.patience, _NO_CHECKPOINT,
                                                                 _ADVICE))
        logger.warning('{}. Skipping this step as the AMP loss scaler does ({} of {} in a row before training '
                       'stops, nonfinite_loss_patience).'.format(text, self.streak, self.patience))


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
