"""The one config loader of the project: every tool and library entry point reads a config file through it."""
import os

from ppdet.core import workspace

from .official import is_official_rtdetr, read_config, translate

__all__ = ['load_config']


def load_config(path):
    """Load a ppdet config file (its `_BASE_` chain included) into ppdet's global config and return it.

    An official PaddleDetection RT-DETR / RT-DETRv2 config (`architecture: DETR` with `transformer:
    RTDETRTransformer(v2)`) is translated to our modules first (ppdet_rtdetr.official), unless this ppdet
    registers that transformer itself; every other config is loaded by ppdet as it is.

    Args:
        path (str): a YAML config, ours or PaddleDetection's.
    Returns:
        ppdet.core.workspace.AttrDict: the merged global config, as `ppdet.core.workspace.load_config` returns it.
    Raises:
        OfficialConfigError: an official option or module we cannot carry over (names file, module and key).
    """
    raw = read_config(path)
    if not is_official_rtdetr(raw):
        return workspace.load_config(path)
    cfg = translate(raw, path)
    cfg['filename'] = os.path.splitext(os.path.basename(path))[0]
    return workspace.merge_config(cfg)
