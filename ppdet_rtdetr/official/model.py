"""Translate the model sections of an official RT-DETR(v2) / Mask-RT-DETR config (`DETR` and the modules it names)
to ours.

Works on the merged raw config (a dict, `_BASE_` chain applied) and never touches ppdet's registry or global
config. The result names our modules as top-level sections, the way our own configs are written.
"""
from ppdet.core import workspace

from .errors import OfficialConfigError
from .names import ANY, BACKBONES, MASK_POST_PROCESS, MODULES

__all__ = ['translate_model']


def _our_shared(ours):
    schema = workspace.global_config.get(ours)
    cls = getattr(schema.pymodule, schema.name) if schema is not None else None
    return set(getattr(cls, '__shared__', []) or [])


def _resolve(raw, value, path, owner, key):
    """An injected module, written as a top-level section name or inline `{name: ..., options}`:
    returns (module name, its options)."""
    if isinstance(value, str):
        return value, dict(raw.get(value) or {})
    if isinstance(value, dict) and 'name' in value:
        options = dict(value)
        return options.pop('name'), options
    raise OfficialConfigError(path, owner, key, f'expected a module name or {{name: ..., options}}, got {value!r}')


def translate_section(raw, name, section, path, spec=None):
    """One official module section -> {our key: value}, following its `ModuleSpec` (see names.py; `spec` overrides
    the table's entry for `name`).

    Injected sub-modules come back translated too: `encoder_layer` inline, the loss and matcher as extra
    top-level sections, returned in `extra` ({our module name: options}).
    """
    spec = spec or MODULES.get(name)
    if spec is None:
        raise OfficialConfigError(path, name, None, 'this official module has no counterpart in ppdet_rtdetr '
                                  f'(supported: {sorted(k for k, v in MODULES.items() if v.ours)})')
    ours_shared = _our_shared(spec.ours) if spec.ours else set()
    options, extra = {}, {}
    for key, value in section.items():
        if key in spec.keys:
            options[spec.keys[key]] = value
        elif key in spec.fixed:
            accepted = spec.fixed[key]
            if accepted is not ANY and value not in accepted:
                raise OfficialConfigError(path, name, key, f'{value!r} is not supported by {spec.ours or name} '
                                          f'(only {", ".join(map(repr, accepted))})')
        else:
            raise OfficialConfigError(path, name, key, f'option not supported by {spec.ours or name} '
                                      f'(supported: {sorted(set(spec.keys) | set(spec.fixed))})')
    for key in spec.shared:
        if key not in section and key in raw and key in spec.keys and spec.keys[key] not in ours_shared:
            options[spec.keys[key]] = raw[key]
    for key, default in spec.defaults.items():
        if key not in section and not (key in spec.shared and key in raw):
            options[spec.keys[key]] = default
    for key in spec.inject:
        sub_name, sub_section = _resolve(raw, options[spec.keys[key]], path, name, key)
        sub_options, sub_extra = translate_section(raw, sub_name, sub_section, path)
        extra.update(sub_extra)
        sub_spec = MODULES[sub_name]
        if sub_spec.ours is None:  # a layer config our module takes inline
            options[spec.keys[key]] = sub_options
        else:
            options[spec.keys[key]] = sub_spec.ours
            extra[sub_spec.ours] = sub_options
    return options, extra


def _check_encoder_width(options, path):
    layer = options.get('encoder_layer') or {}
    d_model = layer.pop('d_model', None)
    if d_model is not None and d_model != options['hidden_dim']:
        raise OfficialConfigError(path, 'TransformerLayer', 'd_model',
                                  f"{d_model} differs from the HybridEncoder hidden_dim {options['hidden_dim']} "
                                  '(the official model cannot run so)')


def _v2_points(options, section):
    # RT-DETRv2 keeps `num_points_scale` in its state dict for an int too: ours does so for a list
    points = options['num_decoder_points']
    if not isinstance(points, (list, tuple)):
        options['num_decoder_points'] = [points] * section.get('num_levels', 3)


def translate_model(raw, path):
    """Returns ({our section name: options}, [official section names consumed]) for `raw['DETR']`."""
    detr, extra = translate_section(raw, 'DETR', dict(raw.get('DETR') or {}), path)
    sections = {'RTDETRDetector': detr}
    if 'neck' not in detr or detr['neck'] is None:
        raise OfficialConfigError(path, 'DETR', 'neck', 'an RT-DETR config needs neck: HybridEncoder')
    # Mask-RT-DETR: the official DETR and DETRPostProcess share the global `with_mask`
    with_mask = bool(dict(raw.get('DETR') or {}).get('with_mask', raw.get('with_mask', False)))
    mask_parts = {'neck': 'MaskHybridEncoder', 'detr_head': 'MaskDINOHead', 'transformer': 'MaskRTDETR'}
    for part, expected in (('neck', ('HybridEncoder', 'MaskHybridEncoder')),
                           ('detr_head', ('DINOHead', 'MaskDINOHead')), ('post_process', ('DETRPostProcess',)),
                           ('transformer', ('RTDETRTransformer', 'RTDETRTransformerv2', 'MaskRTDETR'))):
        name = detr[part]
        if name not in expected:
            raise OfficialConfigError(path, 'DETR', part, f'{name!r}: ppdet_rtdetr builds RT-DETR with '
                                      f'{" or ".join(expected)} here')
        if part in mask_parts and (name == mask_parts[part]) != with_mask:
            raise OfficialConfigError(path, 'DETR', part, f'{name!r} with with_mask: {with_mask}: Mask-RT-DETR is '
                                      f'with_mask: true with {", ".join(mask_parts.values())}, RT-DETR is neither')
        section = dict(raw.get(name) or {})
        spec = MASK_POST_PROCESS if part == 'post_process' and section.get('with_mask', with_mask) else MODULES[name]
        options, sub = translate_section(raw, name, section, path, spec)
        if name in ('HybridEncoder', 'MaskHybridEncoder'):
            _check_encoder_width(options, path)
        if name == 'RTDETRTransformerv2':
            _v2_points(options, section)
        detr[part] = spec.ours
        sections[spec.ours] = options
        sections.update(sub)
    backbone = detr['backbone']
    if backbone in BACKBONES:
        options, _ = translate_section(raw, backbone, dict(raw.get(backbone) or {}), path)
        detr['backbone'] = MODULES[backbone].ours
        sections[MODULES[backbone].ours] = options
    elif backbone not in workspace.global_config:
        raise OfficialConfigError(path, 'DETR', 'backbone', f'{backbone!r} is neither an official RT-DETR backbone '
                                  f'we translate {BACKBONES} nor a module registered in ppdet')
    # any other registered ppdet backbone keeps its own section, as in our configs
    consumed = [name for name in MODULES if name in raw]
    return sections, consumed
