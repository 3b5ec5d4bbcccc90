"""Shims that make ppdet 2.6.0 run at all on Paddle 3.x / Pillow 10: each fixes a crash and changes nothing else.

Applied once, when ``ppdet_rtdetr`` is imported (its ``__init__`` imports this module first); applying them
again is a no-op. Each names the versions and the error it fixes, and ``tests/test_compat.py`` shows that
error on the unpatched path (a patched function keeps the original as ``__wrapped__``):

* ``ImageDraw.ImageDraw.textsize`` (removed in Pillow 10; ppdet's ``draw_bbox`` calls it);
* ``ModelEMA.__init__`` with ``ema_filter_no_grad=True`` (ppdet 2.6.0 appends to a set, on any Paddle);
* ``Trainer.__init__`` with ``print_params: true`` (Paddle 3's 0-D ``numel()``).

``tests/test_plugin_import.py`` checks that nothing else of ppdet changes on import. What this project does
differently from ppdet on purpose lives in ``ppdet_rtdetr.engine.RTDETRTrainer`` (including an export that works
on Paddle 3), ``ppdet_rtdetr.cli`` and ``ppdet_rtdetr.device``.
"""
import functools
import inspect

import numpy as np
import paddle
from PIL import ImageDraw

from ppdet.engine import trainer as ppdet_trainer
from ppdet.optimizer import ema as ppdet_ema
from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['BATCH_NORMS', 'apply']

# every batch-norm class of Paddle 3 (ppdet's get_bn_running_state_names knows only BatchNorm2D and SyncBatchNorm)
BATCH_NORMS = (paddle.nn.BatchNorm, paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D,
               paddle.nn.SyncBatchNorm)


# Pillow 10 removed ImageDraw.textsize, which ppdet 2.6.0's visualizer.draw_bbox calls to size the
# label background, so `tools/infer.py` fails with AttributeError while drawing.
def _textsize(self, text, font=None, *args, **kwargs):
    """(width, height) of `text` drawn at (0, 0), as ImageDraw.textsize returned before Pillow 10.

    This is the right/bottom edge of the ink box, not its width: ppdet draws the text at the
    rectangle's corner, so the rectangle must reach the far edge including the font's offset.
    """
    _, _, right, bottom = self.textbbox((0, 0), text, font, *args, **kwargs)
    return right, bottom


def _add_pillow_textsize():
    if not hasattr(ImageDraw.ImageDraw, 'textsize'):
        ImageDraw.ImageDraw.textsize = _textsize


# ppdet 2.6.0's ModelEMA(ema_filter_no_grad=True) (the RT-DETR recipe) calls `.append` on its black
# list, which is a set: "'set' object has no attribute 'append'". Adding the frozen parameters at
# that point would also be wrong: their EMA entries were already set to zeros, and apply() returns
# black-listed entries unchanged, so the EMA weights would zero every frozen parameter.


def _ema_init_with_no_grad_filter(ema_init):
    signature = inspect.signature(ema_init)

    @functools.wraps(ema_init)
    def __init__(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        filter_no_grad = bound.arguments['ema_filter_no_grad']
        bound.arguments['ema_filter_no_grad'] = False
        ema_init(*bound.args, **bound.kwargs)
        if not filter_no_grad:
            return
        self, model = bound.arguments['self'], bound.arguments['model']
        # BatchNorm running statistics are stop_gradient parameters in Paddle but must be averaged;
        # ppdet's get_bn_running_state_names only knows BatchNorm2D and SyncBatchNorm
        bn_state_names = {'{}.{}'.format(prefix, stat)
                          for prefix, layer in model.named_sublayers() if isinstance(layer, BATCH_NORMS)
                          for stat in ('_mean', '_variance')}
        live_state = model.state_dict()
        for name, param in model.named_parameters():
            if param.stop_gradient and name not in bn_state_names:
                self.ema_black_list.add(name)
                self.state_dict[name] = live_state[name]

    return __init__


def _fix_ema_filter_no_grad():
    if not hasattr(ppdet_ema.ModelEMA.__init__, '__wrapped__'):
        ppdet_ema.ModelEMA.__init__ = _ema_init_with_no_grad_filter(ppdet_ema.ModelEMA.__init__)


# ppdet 2.6.0's Trainer.__init__ prints the parameter count (`print_params: true`) with
# `(sum(p.numel() ...) / 1e6).numpy()[0]`; Paddle 3 makes numel() 0-D, so this raises "too many
# indices for array". The count is done here instead, with the same exclusions as ppdet's.
def _trainer_init_counting_params(trainer_init):
    @functools.wraps(trainer_init)
    def __init__(self, cfg, mode='train'):
        print_params = cfg.get('print_params', False)
        if print_params:
            cfg['print_params'] = False
        try:
            trainer_init(self, cfg, mode)
        finally:
            if print_params:
                cfg['print_params'] = True
        if print_params:
            self.cfg['print_params'] = True
            count = sum(int(np.prod(param.shape)) for name, param in self.model.named_parameters()
                        if all(skip not in name for skip in ('_mean', '_variance', 'aux_')))
            logger.info('Model Params : {} M.'.format(count / 1e6))

    return __init__


def _fix_print_params():
    if not hasattr(ppdet_trainer.Trainer.__init__, '__wrapped__'):
        ppdet_trainer.Trainer.__init__ = _trainer_init_counting_params(
            ppdet_trainer.Trainer.__init__)


def apply():
    """Install every shim (idempotent)."""
    _fix_print_params()
    _add_pillow_textsize()
    _fix_ema_filter_no_grad()


apply()
