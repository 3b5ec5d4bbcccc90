"""``AtomicCheckpointer``: ppdet's ``Checkpointer`` callback, saving through ``checkpoint.save_model``.

``RTDETRTrainer`` puts it in place of ppdet's ``Checkpointer``; ppdet's own Trainer keeps its callback.
"""
import paddle.distributed as dist

from ppdet.engine.callbacks import Checkpointer
from ppdet.utils.logger import setup_logger

from .checkpoint import CONFIG_KEY, DEFAULT_FORMAT, save_model

logger = setup_logger(__name__)

__all__ = ['TARGET_METRICS', 'AtomicCheckpointer']

# ppdet's COCO metric keys: 'mask' holds the segm AP
TARGET_METRICS = ('bbox', 'mask')


class AtomicCheckpointer(Checkpointer):
    """ppdet's ``Checkpointer`` callback whose saves go through ``checkpoint.save_model`` (atomic, with a manifest).

    Saves what ppdet's saves for a detector: ``<epoch>`` every ``snapshot_epoch`` epochs, ``model_final``
    after the last one, and ``best_model`` when an evaluation (``--eval``) reaches the best AP so far: the bbox
    AP, or with ``target_metrics: mask`` (the official Mask-RT-DETR configs' key, which ppdet 2.6.0 ignores)
    the segm AP. With EMA the EMA weights are the weights file (the Trainer has swapped them into the model at
    epoch end) and the trained ones the ``model`` file. ``checkpoint_format`` in the config chooses the format.
    """

    def __init__(self, model):
        super().__init__(model)
        self.target = model.cfg.get('target_metrics', 'bbox')
        if self.target not in TARGET_METRICS:
            raise ValueError('target_metrics: {!r} is not one of {} (the AP that chooses best_model)'.format(
                self.target, TARGET_METRICS))

    def on_epoch_end(self, status):
        if dist.get_world_size() > 1 and dist.get_rank() != 0:
            return
        save_name = self._save_name(status)
        if save_name is None:
            return
        weight = self.weight.state_dict()
        fmt = self.model.cfg.get(CONFIG_KEY, DEFAULT_FORMAT)
        if self.model.use_ema:
            save_model(status['weight'], self.model.optimizer, self.save_dir, save_name, status['epoch_id'] + 1,
                       ema_model=weight, checkpoint_format=fmt)
        else:
            save_model(weight, self.model.optimizer, self.save_dir, save_name, status['epoch_id'] + 1,
                       checkpoint_format=fmt)

    def _save_name(self, status):
        cfg, epoch = self.model.cfg, status['epoch_id']
        if status['mode'] == 'train':
            if epoch == cfg.epoch - 1:
                return 'model_final'
            return str(epoch) if (epoch + 1) % cfg.snapshot_epoch == 0 else None
        if status['mode'] != 'eval' or not status.get('save_best_model'):
            return None
        save_name = None
        for metric in self.model._metrics:
            results = metric.get_results()
            if self.target not in results:
                logger.warning('Evaluation results empty, this may be due to training iterations being too '
                               'few or not loading the correct weights.')
                return None
            if results[self.target][0] >= self.best_ap:
                self.best_ap = results[self.target][0]
                save_name = 'best_model'
            logger.info('Best test {} ap is {:0.3f}.'.format(self.target, abs(self.best_ap)))
        return save_name
