"""What the ppdet-style tools share before their real work: argument parsing, `-o` overrides, config, device.

ppdet 2.6.0's command line has two traps this module removes, for every tool in one place:

* `-o` is an argparse ``nargs='*'`` option, so a second `-o` silently replaces the first (`-o weights=W
  -o trt=True` would drop the weights). ``ToolArgsParser`` joins every `-o` group into one.
* ``merge_config`` merges the overrides with ``dict_merge``, which cannot reach into a config object or a
  list: `-o TrainDataset.dataset_dir=x` turns a ``!COCODataSet`` into a plain dict ("The module
  TrainDataset is not registered") and `-o LearningRate.schedulers.0.max_epochs=30` turns the list of
  schedulers into a dict ("'str' object has no attribute 'use_warmup'"). ``apply_overrides`` sets the
  attributes of config objects, and refuses a key path it cannot set with a message that says how to set it.
  ppdet's ``dict_merge`` itself stays as it is.
"""
import argparse
import copy
import sys
from collections.abc import Mapping

import yaml

from ppdet.core import workspace
from ppdet.utils.check import check_config, check_version
from ppdet.utils.cli import ArgsParser, merge_args

from .device import resolve_device
from .config import load_config
from .delegate import Delegate

__all__ = ['OverrideError', 'ToolArgsParser', 'apply_overrides', 'load_tool_config', 'merge_opt_lists',
           'str2bool']


class OverrideError(ValueError):
    """A `-o key=value` that cannot be applied to the loaded config; the message says what to do instead."""


def str2bool(value):
    """Parse ppdet's spelled-out booleans (`--use_vdl True`, `--visualize False`) as argparse types."""
    if value.lower() in ('true', 't', 'yes', 'y', '1'):
        return True
    if value.lower() in ('false', 'f', 'no', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError('expected a boolean, got {!r}'.format(value))


def merge_opt_lists(argv):
    """Command-line args with every `-o k=v ...` group joined into one, at the end.

    Args:
        argv (list[str]): e.g. ``['-c', 'x.yml', '-o', 'a=1', '--eval', '-o', 'b=2', 'c=3']``.
    Returns:
        list[str]: e.g. ``['-c', 'x.yml', '--eval', '-o', 'a=1', 'b=2', 'c=3']`` (unchanged without `-o`).
    """
    opts, rest, in_opt = [], [], False
    for arg in argv:
        if arg in ('-o', '--opt'):
            in_opt = True
        elif in_opt and not arg.startswith('-'):
            opts.append(arg)
        else:
            in_opt = False
            rest.append(arg)
    return rest + (['-o'] + opts if opts else [])


class ToolArgsParser(ArgsParser):
    """ppdet's ``ArgsParser`` (`-c`, `-o`) whose `-o` may be repeated; ``parse_args`` returns ``args.opt`` as
    ppdet's nested dict (``{'TrainDataset': {'dataset_dir': 'x'}}``, values read as YAML).

    Args:
        description (str|None): the tool's help text.
        require_config (bool): `-c` is required (a parser error names it when missing).
    """

    def __init__(self, description=None, require_config=True):
        super().__init__()
        self.description, self.require_config = description, require_config

    def parse_args(self, argv=None):
        argv = merge_opt_lists(sys.argv[1:] if argv is None else list(argv))
        args = argparse.ArgumentParser.parse_args(self, argv)
        if self.require_config and args.config is None:
            self.error('-c/--config is required')
        bad = [item for item in args.opt or [] if '=' not in item]
        if bad:
            self.error('-o takes key=value items, got {}'.format(', '.join(repr(item) for item in bad)))
        args.opt = self._parse_opt(args.opt)
        return args


def _is_config_object(value):
    """A dataset or other object a YAML tag built (`TrainDataset: !COCODataSet`), not a plain value."""
    return hasattr(value, '__dict__') and not isinstance(value, (dict, type))


def _first_leaf(path, value):
    """The full dotted key path of the first `-o` item under `path` (for messages)."""
    while isinstance(value, Mapping) and value:
        key, value = next(iter(value.items()))
        path = path + (str(key),)
    return '.'.join(path)


def _list_item_error(path, current, values):
    """The refusal of `-o a.list.N.key=v`, with the whole-list `-o` that sets it when one can be written."""
    leaf = _first_leaf(path, values)
    text = ('-o {}: {} is a list, and -o cannot set one item of a list (ppdet would replace the list by a '
            'dict). Give the whole list, or set it in a config file whose _BASE_ is this one.'.format(
                leaf, '.'.join(path)))
    index, item = next(iter(values.items()))
    edited = copy.deepcopy(list(current))
    try:
        position = int(index)
        if isinstance(item, Mapping) and isinstance(edited[position], dict):
            _merge(edited[position], item, path + (str(index),), {})
        else:
            edited[position] = item
        flow = yaml.safe_dump(edited, default_flow_style=True, sort_keys=False, width=float('inf')).strip()
    except (ValueError, TypeError, IndexError, yaml.YAMLError):  # OverrideError is a ValueError
        return OverrideError(text)
    return OverrideError(text + ' Here: -o "{}={}"'.format('.'.join(path), flow))


def _set(target, key, value):
    if isinstance(target, dict):
        target[key] = value
    else:
        setattr(target, key, value)


def _merge(target, values, path, root):
    """Merges the nested `-o` dict `values` into `target` (a dict, or a config object when `path` names one).

    `root` is the whole config: a `!Delegate` entry's settings are the section of the module it names there."""
    if isinstance(target, Delegate) and isinstance(root.get(target.to), dict):
        # `-o TrainReader.batch_size=8` where TrainReader is `!Delegate {to: RTDETRTrainReader}` (every v2
        # config, and an official one after translation) means what it says: RTDETRTrainReader.batch_size
        target = root[target.to]
    is_object = not isinstance(target, dict)
    for key, value in values.items():
        here = path + (str(key),)
        if is_object and not hasattr(target, key):
            raise OverrideError('-o {}: {} has no attribute {!r}'.format(
                _first_leaf(path, {key: value}), type(target).__name__, key))
        current = getattr(target, key) if is_object else (target[key] if key in target else None)
        if not isinstance(value, Mapping):
            _set(target, key, value)
        elif isinstance(current, dict) or _is_config_object(current):
            _merge(current, value, here, root)
        elif isinstance(current, (list, tuple)):
            raise _list_item_error(here, current, value)
        elif current is None:
            _set(target, key, dict(value))
        else:
            raise OverrideError('-o {}: {} is {!r}, a single value without keys below it; set it with '
                                '-o {}=<value>'.format(_first_leaf(here, value), '.'.join(here), current,
                                                       '.'.join(here)))


def apply_overrides(overrides, config=None):
    """Merges parsed `-o` overrides into the loaded config (ppdet's global config by default).

    Values replace values; a mapping merges into a section (a dict) key by key, and into a config object
    (a `!COCODataSet` dataset, ...) attribute by attribute. Refused, with an ``OverrideError`` naming the key
    path and what to write instead: an attribute the object lacks, an item of a list (`schedulers.0.x`), a key
    below a single value. New top-level keys and sections are added, as ppdet does.

    Args:
        overrides (dict): ``ToolArgsParser``'s ``args.opt``, e.g. ``{'TrainDataset': {'dataset_dir': 'x'}}``.
        config (dict|None): the config to change; ``ppdet.core.workspace.global_config`` when None.
    Returns:
        dict: the changed config.
    """
    config = workspace.global_config if config is None else config
    _merge(config, overrides or {}, (), config)
    return config


def load_tool_config(args, mode):
    """Load `args.config` as PaddleDetection's tools do.

    Applies the parsed flags (ppdet's merge_args) and the `-o key=value` overrides (``apply_overrides``),
    chooses the device this Paddle build has (see `device.resolve_device`), applies `--slim_config` if the tool
    has it (the overrides win over the slim config) and runs ppdet's config and version checks.

    Args:
        args (argparse.Namespace): from ``ToolArgsParser`` (`config`, `opt`, optional `slim_config`).
        mode (str): 'train', 'eval' or 'test', for the slim model.
    Returns:
        (cfg, device): the global config and the device name passed to paddle.set_device.
    """
    cfg = load_config(args.config)
    merge_args(cfg, args)
    apply_overrides(args.opt)
    device = resolve_device(cfg)
    if getattr(args, 'slim_config', None):
        from ppdet.slim import build_slim_model
        cfg = build_slim_model(cfg, args.slim_config, mode=mode)
        apply_overrides(args.opt)
    check_config(cfg)
    check_version()
    return cfg, device
