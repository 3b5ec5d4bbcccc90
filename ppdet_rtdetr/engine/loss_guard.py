"""Stop training at the first non-finite loss, before it reaches the weights or a checkpoint.

ppdet 2.6.0's Trainer keeps stepping on a NaN / inf loss: the optimizer writes NaN into every weight, the
log shows ``loss: nan`` for the rest of the run, and every later checkpoint is garbage. The guard is a
forward post-hook on the model, installed for the duration of ``Trainer.train`` (see
``ppdet_rtdetr.engine``): it reads the training loss of each step (one device sync, which ppdet's own
logging does anyway) and raises ``NonFiniteLossError`` before ``backward`` and the optimizer step, naming
the step and every loss part. Checkpoints are only written at epoch ends, so none is written for the
failing epoch. ``stop_on_nonfinite_loss: false`` in the config turns the guard off.

Under data parallel training each rank checks its own loss; the failing rank's error ends the run (the
launcher stops the others).
"""
import math

__all__ = ['NonFiniteLossError', 'check_loss', 'install']


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step and the loss parts."""


def _value(tensor):
    return float(tensor.numpy().reshape(-1)[0]) if hasattr(tensor, 'numpy') else float(tensor)


def check_loss(outputs, status):
    """Raises ``NonFiniteLossError`` when ``outputs['loss']`` is not finite.

    Args:
        outputs (dict[str, Tensor]): the model's training outputs: ``loss`` and its parts (``loss_*``),
            each a one-element tensor.
        status (dict): ppdet's ``Trainer.status``: ``epoch_id``, ``step_id`` and ``steps_per_epoch``.
    """
    if math.isfinite(_value(outputs['loss'])):
        return
    epoch, step, steps = status['epoch_id'], status['step_id'], status['steps_per_epoch']
    parts = {k: _value(v) for k, v in outputs.items() if k != 'loss' and k.startswith('loss')}
    bad = ', '.join('{}={}'.format(k, v) for k, v in parts.items() if not math.isfinite(v)) or 'none'
    good = ', '.join('{}={:.6g}'.format(k, v) for k, v in parts.items() if math.isfinite(v)) or 'none'
    raise NonFiniteLossError(
        'Non-finite loss {} at epoch {}, step {}/{} (iteration {}): non-finite parts: {}; finite '
        'parts: {}. Training stopped before the optimizer step; no checkpoint was written for this epoch. '
        'Check the data (tools/check_dataset.py), lower the learning rate, or train without --amp.'.format(
            _value(outputs['loss']), epoch, step, steps, epoch * steps + step + 1,
            bad, good))


def install(trainer):
    """Hooks the guard into ``trainer.model``; returns the hook handle (``.remove()`` uninstalls it)."""
    status = trainer.status

    def guard(layer, inputs, outputs):
        if layer.training and isinstance(outputs, dict) and 'loss' in outputs:
            check_loss(outputs, status)

    return trainer.model.register_forward_post_hook(guard)
