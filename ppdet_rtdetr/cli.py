"""What the ppdet-style tools share before their real work: boolean flags, config loading, device choice."""
import argparse

from ppdet.core.workspace import merge_config
from ppdet.utils.check import check_config, check_version
from ppdet.utils.cli import merge_args

from .compat import resolve_device
from .config import load_config

__all__ = ['str2bool', 'load_tool_config']


def str2bool(value):
    """Parse ppdet's spelled-out booleans (`--use_vdl True`, `--visualize False`) as argparse types."""
    if value.lower() in ('true', 't', 'yes', 'y', '1'):
        return True
    if value.lower() in ('false', 'f', 'no', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError('expected a boolean, got {!r}'.format(value))


def load_tool_config(args, mode):
    """Load `args.config` as PaddleDetection's tools do.

    Applies the parsed flags (ppdet's merge_args) and the `-o key=value` overrides, chooses the device this
    Paddle build has (see `compat.resolve_device`), applies `--slim_config` if the tool has it (the
    overrides win over the slim config) and runs ppdet's config and version checks.

    Args:
        args (argparse.Namespace): from ppdet's ArgsParser (`config`, `opt`, optional `slim_config`).
        mode (str): 'train', 'eval' or 'test', for the slim model.
    Returns:
        (cfg, device): the global config and the device name passed to paddle.set_device.
    """
    cfg = load_config(args.config)
    merge_args(cfg, args)
    merge_config(args.opt)
    device = resolve_device(cfg)
    if getattr(args, 'slim_config', None):
        from ppdet.slim import build_slim_model
        cfg = build_slim_model(cfg, args.slim_config, mode=mode)
        merge_config(args.opt)
    check_config(cfg)
    check_version()
    return cfg, device
