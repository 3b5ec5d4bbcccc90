"""RTDETRTrainer: ppdet's Trainer with this project's weight loading, checkpoints and loss guard.

PaddleDetection extends its own Trainer by subclassing it (``ppdet/engine/trainer_ssod.py``) and its tools
pick the class; our tools construct ``RTDETRTrainer``. Whoever builds ppdet's ``Trainer`` in the same process
(another model, another tool) gets ppdet's behaviour untouched. What the subclass changes:

* ``load_weights`` (``pretrain_weights`` in training, ``weights`` in eval / infer) uses
  ``pretrain.load_pretrain_weight``: a reshaped class head is skipped with one listing, a file of another
  architecture is a ``WeightsMismatchError``;
* ``resume_weights`` takes a checkpoint or a folder (its complete checkpoint with the highest recorded epoch:
  ``checkpoint.resume_path``)
  and restores it with ``checkpoint.load_checkpoint``;
* checkpoints are written atomically with a manifest of digests, as ``.pdparams`` or ``.safetensors``
  (``checkpoint_format``; ``checkpointer.AtomicCheckpointer`` replaces ppdet's ``Checkpointer``);
* ``train`` holds the lock of its save_dir, checked writable first, and stops cleanly on SIGTERM / SIGINT
  (``run_folder``, ``stop_signals``);
* ``train`` runs with the non-finite-loss guard (``loss_guard``, which also checks the predictions before the
  matcher; ``stop_on_nonfinite_loss: false`` turns it off, ``nonfinite_loss_patience`` sets how many consecutive
  non-finite steps an ``--amp`` run skips); a non-finite matching cost ends it with the step named;
* with ``norm_type: sync_bn`` on several devices, norms that use global statistics (frozen: ``freeze_norm``)
  stay frozen BatchNorms when ppdet converts the model to SyncBatchNorm;
* training on CPU computes convolution gradients on oneDNN (``conv_grad``: forward and losses unchanged,
  gradients equal up to float32 summation order); ``cpu_conv_grad: paddle`` keeps Paddle's kernels;
* ``export`` works on Paddle 3: the traced model is built with ``full_graph=True`` (``_get_infer_cfg_and_input_spec``).
  Our tools export with ``ppdet_rtdetr.export``; this keeps ppdet's own ``Trainer.export`` call working for
  whoever uses the trainer directly.
"""
import paddle

from ppdet.engine import Trainer
from ppdet.engine.export_utils import _prune_input_spec
from ppdet.engine.callbacks import Checkpointer, ComposeCallback
from ppdet.utils.logger import setup_logger

from ..compat import BATCH_NORMS
from ..modeling.matcher import NonFiniteCostError
from ..native import conv_grad, onednn
from . import checkpoint, checkpointer, loss_guard, pretrain, run_folder

logger = setup_logger(__name__)

__all__ = ['RTDETRTrainer', 'convert_sync_batchnorm_keeping_frozen']

def convert_sync_batchnorm_keeping_frozen(layer):
    """``SyncBatchNorm.convert_sync_batchnorm``, except for norms with ``use_global_stats=True`` (frozen).

    Paddle's SyncBatchNorm has no ``use_global_stats``: its own conversion would make a frozen norm normalise
    with batch statistics and update its stored ones. Sublayers are replaced in place, as Paddle's does.
    """
    if isinstance(layer, BATCH_NORMS):
        if getattr(layer, '_use_global_stats', None):
            return layer
        return paddle.nn.SyncBatchNorm.convert_sync_batchnorm(layer)
    for name, child in list(layer._sub_layers.items()):
        layer._sub_layers[name] = convert_sync_batchnorm_keeping_frozen(child)
    return layer


class RTDETRTrainer(Trainer):
    """ppdet's ``Trainer(cfg, mode)`` with the changes listed in the module docstring; same arguments.

    Raises:
        ValueError: ``nonfinite_loss_patience`` is not an integer >= 1, ``cpu_conv_grad`` is not 'onednn' /
            'paddle', or ``checkpoint_format`` is not 'pdparams' / 'safetensors' (before the model and readers
            are built).
    """

    def __init__(self, cfg, mode='train'):
        loss_guard.check_patience(cfg.get('nonfinite_loss_patience', loss_guard.DEFAULT_PATIENCE))
        conv_grad.check_choice(cfg.get(conv_grad.TRAINER_KEY, 'onednn'))
        checkpoint.check_format(cfg.get(checkpoint.CONFIG_KEY, checkpoint.DEFAULT_FORMAT))
        super().__init__(cfg, mode)
        if self.mode == 'train':
            self._choose_conv_grads()

    def _choose_conv_grads(self):
        """oneDNN convolution gradients for CPU training, unless ``cpu_conv_grad: paddle``."""
        if self.cfg.get(conv_grad.TRAINER_KEY, 'onednn') != 'onednn' or paddle.get_device() != 'cpu':
            return
        try:
            count = conv_grad.use_onednn_conv_grads(self.model)
        except onednn.DnnlUnavailable as e:
            logger.warning('convolution gradients stay on Paddle\'s CPU kernels: {}'.format(e))
            return
        if count:
            logger.info('convolution gradients of {} layers on oneDNN ({}: paddle keeps Paddle\'s kernels)'.format(
                count, conv_grad.TRAINER_KEY))

    def _init_callbacks(self):
        super()._init_callbacks()
        if self.mode == 'train':
            self._callbacks = [checkpointer.AtomicCheckpointer(self) if type(c) is Checkpointer else c
                               for c in self._callbacks]
            self._compose_callback = ComposeCallback(self._callbacks)

    def load_weights(self, weights):
        if self.is_loaded_weights:
            return
        self.start_epoch = 0
        pretrain.load_pretrain_weight(self.model, weights)

    def resume_weights(self, weights):
        path = checkpoint.resume_path(weights)
        # resume_path has verified the checkpoint against its manifest
        self.start_epoch = checkpoint.load_checkpoint(self.model, path, self.optimizer,
                                                      self.ema if self.use_ema else None, verify=False)

    def _get_infer_cfg_and_input_spec(self, save_dir, prune_input=True, kl_quant=False):
        """ppdet's method (writes infer_cfg.yml, returns the traced model and its input spec), traced with
        ``full_graph=True``: Paddle 3's default tracer (SOT) has no ``main_program``, which the input-spec pruning
        reads, so ppdet 2.6.0's ``Trainer.export`` fails with "Can't call main_program when full_graph=False".
        """
        _, input_spec = super()._get_infer_cfg_and_input_spec(save_dir, prune_input=False, kl_quant=kl_quant)
        if not prune_input:
            return None, input_spec
        static_model = paddle.jit.to_static(self.model, input_spec=input_spec, full_graph=True)
        return static_model, _prune_input_spec(input_spec, static_model.forward.main_program,
                                               static_model.forward.outputs)

    def _on_amp_device(self):
        # ppdet's condition for auto_cast, GradScaler and the SyncBatchNorm conversion (Trainer.train)
        return bool(self.cfg.get('use_gpu') or self.cfg.get('use_npu') or self.cfg.get('use_mlu'))

    def _sync_bn(self):
        return self.cfg.get('norm_type') == 'sync_bn' and self._on_amp_device() and self._nranks > 1

    def _nonfinite_guards(self):
        """The loss guard and, for AMP runs whose loss scaler Paddle disables, the step gate (or none)."""
        if not self.cfg.get('stop_on_nonfinite_loss', True):
            return []
        if not self.use_amp:
            return [loss_guard.LossGuard(self)]
        guards = [loss_guard.LossGuard(self, self.cfg.get('nonfinite_loss_patience', loss_guard.DEFAULT_PATIENCE))]
        # ppdet builds GradScaler(enable=use_gpu or use_npu or use_mlu), which Paddle runs on those devices;
        # elsewhere the scaler is off and would step on whatever gradients it gets
        if not self._on_amp_device():
            guards.append(loss_guard.StepGate(self.optimizer, self.model.parameters()))
        return guards

    def train(self, validate=False):
        guards = self._nonfinite_guards()
        sync_bn = self._sync_bn()
        if sync_bn:
            convert_sync_batchnorm_keeping_frozen(self.model)
            # ppdet's train() would convert again, frozen norms included: it reads norm_type from our cfg copy
            self.cfg['norm_type'] = 'bn'
        try:
            with run_folder.training_run(self):  # save_dir locked and checked; SIGTERM / SIGINT handled
                return super().train(validate)
        except NonFiniteCostError as e:
            raise loss_guard.cost_error(e, self.status) from e  # the same error, naming the step
        finally:
            for guard in guards:
                guard.remove()
            if sync_bn:
                self.cfg['norm_type'] = 'sync_bn'
