"""The file names PaddleX loads, next to the export's own.

PaddleX 3.x (`paddlex.create_model(model_name, model_dir=...)`, `create_pipeline`, `paddlex --pipeline`) reads a
folder of `inference.json` + `inference.pdiparams` (Paddle 3's program and weights, the same bytes as our
`model.json` / `model.pdiparams`) and `inference.yml`: infer_cfg.yml plus `Global: {model_name: <PaddleX model
name>}`, the name choosing its predictor and pipeline (the pre- and post-processing come from the yml itself).
The two `inference.*` model files are hard links to the `model.*` ones: no second copy of the weights
(a copy only where the file system has no hard links).
"""
import os
import shutil
from collections import OrderedDict

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['PADDLEX_MODEL_NAMES', 'PADDLEX_MASK_MODEL_NAMES', 'DEFAULT_PADDLEX_MODEL_NAME',
           'DEFAULT_PADDLEX_MASK_MODEL_NAME', 'paddlex_model_name', 'write_paddlex_files']

# (backbone class, its size option) -> the PaddleX model of that architecture (PaddleX 3.7.2's detection zoo)
PADDLEX_MODEL_NAMES = {
    ('RTDETRResNet', 18): 'RT-DETR-R18', ('RTDETRResNet', 50): 'RT-DETR-R50',
    ('RTDETRHGNetV2', 'L'): 'RT-DETR-L', ('RTDETRHGNetV2', 'H'): 'RT-DETR-H', ('RTDETRHGNetV2', 'X'): 'RT-DETR-X',
}
# Mask-RT-DETR (`with_mask: True`): PaddleX's instance-segmentation models of the five sizes
PADDLEX_MASK_MODEL_NAMES = {('RTDETRHGNetV2', arch): 'Mask-RT-DETR-' + arch for arch in 'SMLXH'}
# every PaddleX RT-DETR model runs the same predictor on what inference.yml says: the name only has to be one
# PaddleX knows (of the detection models, or of the instance-segmentation ones for a mask export)
DEFAULT_PADDLEX_MODEL_NAME = 'RT-DETR-R50'
DEFAULT_PADDLEX_MASK_MODEL_NAME = 'Mask-RT-DETR-L'
_SIZE_OPTION = {'RTDETRResNet': 'depth', 'RTDETRHGNetV2': 'arch'}


def paddlex_model_name(cfg):
    """The PaddleX model name of config `cfg`: `export.paddlex_model_name` if set, else from its backbone (and
    `with_mask`: Mask-RT-DETR is one of PaddleX's instance-segmentation models).

    Returns:
        str. A backbone PaddleX has no model of (e.g. R34vd, Swin, FocalNet; R50vd-m counts as R50) gives
        DEFAULT_PADDLEX_MODEL_NAME (DEFAULT_PADDLEX_MASK_MODEL_NAME with masks) with a warning naming the
        override. ValueError for an override that is not a non-empty string.
    """
    name = (cfg.get('export') or {}).get('paddlex_model_name')
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError('export.paddlex_model_name must be a PaddleX model name such as RT-DETR-R50, '
                             f'got {name!r}')
        return name
    backbone = (cfg.get(cfg.architecture) or {}).get('backbone')
    option = _SIZE_OPTION.get(backbone)
    size = (cfg.get(backbone) or {}).get(option) if option else None
    masks = bool(cfg.get('with_mask'))
    names, default = ((PADDLEX_MASK_MODEL_NAMES, DEFAULT_PADDLEX_MASK_MODEL_NAME) if masks else
                      (PADDLEX_MODEL_NAMES, DEFAULT_PADDLEX_MODEL_NAME))
    name = names.get((backbone, size))
    if name is None:
        logger.warning(f"PaddleX has no {'Mask-RT-DETR' if masks else 'RT-DETR'} model of backbone {backbone} "
                       f"({option or 'size'}={size}): inference.yml names {default} (PaddleX runs every "
                       "RT-DETR name the same way); set -o export.paddlex_model_name=<name> to choose another")
        name = default
    return name


def _link_or_copy(src, dst):
    if os.path.lexists(dst):
        os.remove(dst)  # a stale name from an earlier export into this folder
    try:
        os.link(src, dst)
    except OSError as err:
        logger.warning(f'cannot hard-link {dst} to {src} ({err}): copying it')
        shutil.copyfile(src, dst)


def write_paddlex_files(save_dir, infer_cfg, model_name):
    """Add PaddleX's names to an exported folder: inference.json / inference.pdiparams (hard links to
    model.json / model.pdiparams) and inference.yml (`infer_cfg` plus Global.model_name).

    Args:
        save_dir (str): the folder export_inference_model wrote.
        infer_cfg (OrderedDict): its infer_cfg.yml content.
        model_name (str): the PaddleX model name (`paddlex_model_name`).
    """
    from .export import write_infer_cfg  # export imports this module
    for ext in ('json', 'pdiparams'):
        _link_or_copy(os.path.join(save_dir, f'model.{ext}'), os.path.join(save_dir, f'inference.{ext}'))
    data = OrderedDict(infer_cfg)
    data['Global'] = OrderedDict(model_name=model_name)
    write_infer_cfg(data, os.path.join(save_dir, 'inference.yml'))
