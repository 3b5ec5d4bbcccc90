"""Read a config file with its `_BASE_` chain, tell whether it is an official RT-DETR(v2) config, translate it.

An official config is one whose `architecture` is `DETR` with `transformer: RTDETRTransformer`,
`RTDETRTransformerv2` or `MaskRTDETR`, on a ppdet that does not register that transformer itself (a newer
PaddleDetection does; then its own modules build the file as it is). Anything else is not touched.
"""
import os

import yaml
from ppdet.core import workspace

from .model import translate_model
from .names import TRANSFORMERS
from .optimizer import translate_optimizer
from .reader import translate_readers

__all__ = ['read_config', 'is_official_rtdetr', 'translate']


def _merge(base, override):
    """ppdet's `dict_merge` (dicts merge key by key, anything else is replaced), on a copy of `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config(path, loader=yaml.Loader):
    """The merged raw config of `path` and its `_BASE_` files, as ppdet merges them, without touching ppdet's
    global config (ppdet 2.6.0's own `_load_config_with_base` merges the first base into it).

    With the default `loader`, YAML tags (`!PiecewiseDecay`, `!COCODataSet`) build their objects as ppdet's does.
    """
    with open(path) as f:
        cfg = yaml.load(f, Loader=loader) or {}
    bases = cfg.pop(workspace.BASE_KEY, [])
    merged = {}
    for base in bases:
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        merged = _merge(merged, read_config(base, loader))
    return _merge(merged, cfg)


def is_official_rtdetr(raw):
    """True for a `DETR` config with an official RT-DETR transformer that this ppdet does not register."""
    if raw.get('architecture') != 'DETR' or not isinstance(raw.get('DETR'), dict):
        return False
    transformer = raw['DETR'].get('transformer')
    return transformer in TRANSFORMERS and transformer not in workspace.global_config


def translate(raw, path):
    """The config `raw` (an official RT-DETR config read from `path`) in our module names, as a new dict.

    Raises:
        OfficialConfigError: an option or module that cannot be carried over, naming `path`, module and key.
    """
    sections, consumed = translate_model(raw, path)
    out = {k: v for k, v in raw.items() if k not in consumed and k != 'DETR'}
    out['architecture'] = 'RTDETRDetector'
    out.update(sections)
    out.update(translate_readers(raw, path))
    out.update(translate_optimizer(raw, path))
    return out
