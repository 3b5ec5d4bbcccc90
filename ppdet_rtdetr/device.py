"""The device a config asks for, among those this Paddle build has: what every tool runs before the Trainer.

ppdet 2.6.0's tools call ``paddle.set_device('gpu')`` when the config says ``use_gpu: true``, which fails on a
CPU-only Paddle build ("The device should not be 'gpu'"), and its ``check_gpu()`` exits instead. The RT-DETR
configs (every ``runtime.yml``) are written for GPU training and must run on CPU unchanged.
"""
import functools

import paddle

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['resolve_device']


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
