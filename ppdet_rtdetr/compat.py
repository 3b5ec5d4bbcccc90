"""Shims that make ppdet 2.6.0 run at all on Paddle 3.x / Pillow 10: each fixes a crash and changes nothing else.

Applied once, when ``ppdet_rtdetr`` is imported (its ``__init__`` imports this module first); applying them
again is a no-op. Each names the versions and the error it fixes, and ``tests/test_compat.py`` shows that
error on the unpatched path (a patched function keeps the original as ``__wrapped__``):

* ``ImageDraw.ImageDraw.textsize`` (removed in Pillow 10; ppdet's ``draw_bbox`` calls it);
* ``ppdet.engine.trainer.paddle.jit.to_static`` (Paddle 3's SOT default has no ``main_program``, which
  ``Trainer.export`` reads);
* ``ModelEMA.__init__`` with ``ema_filter_no_grad=True`` (ppdet 2.6.0 appends to a set, on any Paddle);
* ``Trainer.__init__`` with ``print_params: true`` (Paddle 3's 0-D ``numel()``).

``tests/test_plugin_import.py`` checks that nothing else of ppdet changes on import. What this project does
differently from ppdet on purpose lives in ``ppdet_rtdetr.engine.RTDETRTrainer`` and ``ppdet_rtdetr.cli``.
``resolve_device`` is not a patch: the tools call it after the config is loaded.
"""
import functools
import inspect
import types

import numpy as np
import paddle
from PIL import ImageDraw

from ppdet.engine import trainer as ppdet_trainer
from ppdet.optimizer import ema as ppdet_ema
from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['BATCH_NORMS', 'apply', 'resolve_device']

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


# Paddle 3.0 made SOT (full_graph=False) the default of paddle.jit.to_static, and a SOT function has
# no `main_program`, which ppdet 2.6.0's Trainer._get_infer_cfg_and_input_spec reads to prune the
# export input spec: Trainer.export fails with "Can't call main_program when full_graph=False".
class _ModuleView(types.ModuleType):
    """A read-through view of `base` in which the names given in `overrides` are replaced.

    Installed as one module's global, it changes what that module sees and nothing else.
    """

    def __init__(self, base, **overrides):
        super().__init__(base.__name__, base.__doc__)
        self.__dict__.update(overrides)
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)


def _full_graph_to_static(to_static):
    # wraps() keeps `__module__ == 'paddle.jit.api'` and not_to_static marks the wrapper: otherwise
    # dy2static treats it as user code to transform and export deadlocks in dy2static's lock.
    @paddle.jit.not_to_static
    @functools.wraps(to_static)
    def full_graph_to_static(function=None, *args, **kwargs):
        kwargs.setdefault('full_graph', True)
        return to_static(function, *args, **kwargs)

    return full_graph_to_static


def _trainer_paddle_view():
    """What ppdet's trainer module sees as `paddle`: Paddle, with a full-graph `jit.to_static`."""
    if isinstance(ppdet_trainer.paddle, _ModuleView):
        return
    jit = _ModuleView(paddle.jit, to_static=_full_graph_to_static(paddle.jit.to_static))
    ppdet_trainer.paddle = _ModuleView(paddle, jit=jit)


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
    _trainer_paddle_view()
    _fix_ema_filter_no_grad()


# ppdet 2.6.0's tools call paddle.set_device('gpu') when the config says `use_gpu: true`, which on a
# CPU-only Paddle build fails with "The device should not be 'gpu'"; its check_gpu() exits instead.
# Configs written for GPU training (every RT-DETR runtime.yml) must run on CPU unchanged.
def _has_custom_device(name):
    return name in paddle.device.get_all_custom_device_type()


_DEVICES = (  # in the order ppdet's tools try them
    ('use_gpu', 'gpu', paddle.is_compiled_with_cuda),
    ('use_npu', 'npu', functools.partial(_has_custom_device, 'npu')),
    ('use_xpu', 'xpu', paddle.is_compiled_with_xpu),
    # Paddle 3 ships MLU as a custom device plugin (paddle.is_compiled_with_mlu is gone)
    ('use_mlu', 'mlu', functools.partial(_has_custom_device, 'mlu')),
)


def resolve_device(cfg):
    """Choose the device a config asks for among those this Paddle build supports, and set it.

    Args:
        cfg (dict): the loaded ppdet config (AttrDict). Its `use_gpu`, `use_npu`, `use_xpu` and
            `use_mlu` keys are read (missing means false) and rewritten so that exactly the chosen
            accelerator's key is true (none on CPU): ppdet's Trainer reads all four keys.

    Returns:
        str: the device passed to paddle.set_device: 'gpu', 'npu', 'xpu', 'mlu' or 'cpu'. A
        requested device this build lacks is logged as a warning and skipped, ending on 'cpu'.
    """
    chosen = 'cpu'
    for key, device, available in _DEVICES:
        wanted = bool(cfg.get(key, False))
        if wanted and chosen == 'cpu' and not available():
            logger.warning('Config sets {}: true, but this Paddle build has no {} support: '
                           'ignoring it.'.format(key, device))
        elif wanted and chosen == 'cpu':
            chosen = device
        cfg[key] = device == chosen
    paddle.set_device(chosen)
    logger.info('Running on {}.'.format(chosen))
    return chosen


apply()
