"""Write an official RT-DETR(v2) config as one self-contained config in our module names.

The file is read with its `_BASE_` chain but without building the `!Tag` objects (`!PiecewiseDecay`,
`!COCODataSet`, ...): they are written back as the same tags, so the new file says what the old one said.
"""
import yaml

from ..delegate import Delegate
from .errors import OfficialConfigError
from .loader import is_official_rtdetr, read_config, translate

__all__ = ['migrate']


class Tagged(object):
    """A `!Tag` node kept as it is: `tag` and its mapping / sequence / scalar `value`."""

    def __init__(self, tag, value):
        self.tag, self.value = tag, value


class _KeepTags(yaml.SafeLoader):
    pass


def _construct_tagged(loader, suffix, node):
    tag = '!' + suffix
    if isinstance(node, yaml.MappingNode):
        return Tagged(tag, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged(tag, loader.construct_sequence(node, deep=True))
    return Tagged(tag, loader.construct_scalar(node))


_KeepTags.add_multi_constructor('!', _construct_tagged)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper, data):
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    return dumper.represent_scalar(data.tag, data.value)


_Dumper.add_representer(Tagged, _represent_tagged)
_Dumper.add_representer(Delegate, lambda dumper, data: dumper.represent_mapping('!Delegate', {'to': data.to}))


def migrate(src, dst):
    """Translate the official config `src` (with its bases) and write it to `dst` as one file.

    Raises:
        OfficialConfigError: `src` is not an official RT-DETR config, or has something we cannot carry over.
    """
    raw = read_config(src, loader=_KeepTags)
    if not is_official_rtdetr(raw):
        raise OfficialConfigError(src, 'architecture', None, 'not an official RT-DETR config (architecture: DETR '
                                  'with transformer: RTDETRTransformer or RTDETRTransformerv2): nothing to migrate')
    cfg = translate(raw, src)
    header = (f'# {src} in ppdet_rtdetr module names, written by tools/migrate_config.py (its base files merged '
              'in).\n')
    with open(dst, 'w') as f:
        f.write(header)
        yaml.dump(cfg, f, Dumper=_Dumper, default_flow_style=None, sort_keys=False, width=120)
