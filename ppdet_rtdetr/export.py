"""Export an RT-DETR config to a Paddle Inference folder (model.json, model.pdiparams, infer_cfg.yml) and ONNX.

The exported contract (what `deploy/` reads):
- inputs `image` float32 [-1, 3, H, W] (RGB in the range the config's NormalizeImage gives), `im_shape` float32
  [-1, 2] (H, W) and `scale_factor` float32 [-1, 2] (H / original h, W / original w); the batch is dynamic.
  By default H x W is fixed: anchors and position embeddings are baked for it. `--image_shape 3 -1 -1` (or -1
  for H or W alone) exports a dynamic-size graph that computes them from the input's shape (a few small ops
  per run), so one export runs at any size.
- outputs, in this order (Paddle names them fetch_name_0 and fetch_name_1): `bbox` [b*K, 6] (class index,
  score, x1, y1, x2, y2 in original-image pixels) and `bbox_num` int32 [b]; Mask-RT-DETR adds a third, `mask`
  int32 [b*K, H, W] of {0, 1} (H, W the batch's largest original size, image i's masks in its top-left
  [:h_i, :w_i]), and infer_cfg.yml has `mask: true` (ppdet's key); with exclude_post_process the
  only input is `image` and the outputs are the raw (boxes [b, n, 4] sigmoid cxcywh, logits [b, n, k]).
- `infer_cfg.yml`: ppdet's fields (mode, draw_threshold, metric, use_dynamic_shape, arch, min_subgraph_size,
  Preprocess, label_list) plus `image_shape` [3, H, W] (-1 on a dynamic axis), `exclude_post_process`,
  `num_top_queries` and `use_focal_loss` (what a numpy post-process of a raw export needs). A dynamic-size export
  has `use_dynamic_shape: true`, Preprocess resizing to the config's test size (the deploy scripts take another
  at run time), `size_divisor` (the largest feature stride: run sizes should be multiples of it) and
  `trt_shape_range` {min, opt, max: [H, W]}, the input sizes Paddle-TensorRT builds its engine for.
- `export.cpu_fused_attention: True` (config or `-o`): the decoder's deformable-attention sampling is one
  compiled CPU operator (`ppdet_rtdetr.native.cpu_ops`, the same numbers), for Paddle Inference on CPU only (no ONNX,
  GPU or TensorRT). The folder then holds the operator's library and infer_cfg.yml names it in
  `custom_op_library` and its operators in `custom_ops`; the deploy scripts register it before they create a
  predictor.
- PaddleX (`paddlex_files.py`): the folder also holds `inference.json` / `inference.pdiparams` (hard links to the
  model files) and `inference.yml` (infer_cfg.yml + `Global.model_name`, from the backbone or
  `export.paddlex_model_name`), which PaddleX 3.x loads unchanged.
"""
import os
import shutil
from collections import OrderedDict

import paddle
import paddle.nn as nn
import yaml
from paddle.static import InputSpec
from ppdet.core.workspace import create, merge_config
from ppdet.data.source.category import get_categories
from ppdet.utils.logger import setup_logger

from .native import cpu_ops as ops
from .engine.checkpoint import load_model_weights
from .modeling.deformable_attn import MSDeformableAttention
from .onnx_clean import clean_onnx_model, remove_dead_nodes
from .paddlex_files import paddlex_model_name, write_paddlex_files

logger = setup_logger(__name__)

__all__ = ['resolve_export_size', 'trt_shape_range', 'build_export_model', 'build_infer_cfg', 'write_infer_cfg',
           'export_inference_model', 'export_onnx', 'cpu_fused_attention', 'check_portable']

# ppdet's TRT_MIN_SUBGRAPH entry for DETR-like architectures (ppdet/engine/export_utils.py)
ARCH, MIN_SUBGRAPH_SIZE = 'DETR', 3


def resolve_export_size(cfg, image_shape=None):
    """The export's input [H, W], -1 on a dynamic axis, written back to the config's `eval_size`.

    A fixed size becomes `eval_size`, so the modules bake its anchors and position embeddings; a size with a
    dynamic axis sets `eval_size` to None, so the traced graph computes them from the input's shape.
    Args:
        cfg (AttrDict): the loaded config (with the `-o` overrides merged).
        image_shape (list[int]|None): [3, H, W] from the command line; wins over `eval_size`, which wins over
            `TestReader.inputs_def.image_shape`.
    Returns:
        list[int]: [H, W]. Raises ValueError when no size is known or a size is neither a positive integer
        nor -1.
    """
    if image_shape:
        if len(image_shape) != 3 or image_shape[0] != 3:
            raise ValueError(f'--image_shape must be 3 H W, got {list(image_shape)}')
        size = list(image_shape[1:])
        if cfg.get('eval_size') and list(cfg['eval_size']) != size:
            hw = 'x'.join(str(s) if s > 0 else 'any' for s in size)
            logger.info(f"Exporting for {hw} inputs: --image_shape overrides eval_size {cfg['eval_size']}.")
    elif cfg.get('eval_size'):
        size = list(cfg['eval_size'])
    else:
        inputs_def = cfg.get('TestReader', {}).get('inputs_def', {}) or {}
        if not inputs_def.get('image_shape'):
            raise ValueError('no export size: pass --image_shape 3 H W or set eval_size: [H, W] in the config')
        size = list(inputs_def['image_shape'][-2:])
    if not all(isinstance(s, int) and (s > 0 or s == -1) for s in size):
        raise ValueError(f'the export size H x W = {size} must be positive integers, or -1 for a dynamic axis '
                         f'(--image_shape 3 -1 -1: any size at run time)')
    merge_config({'eval_size': None if -1 in size else size})
    return size


def trt_shape_range(opt_size, size_divisor, min_size=None, max_size=None, size=(-1, -1)):
    """Paddle-TensorRT input-size range {min, opt, max: [H, W]} of a dynamic-size export.

    Args:
        opt_size (list[int]): [H, W] the engine is tuned for (the export's default run size).
        size_divisor (int): min / max defaults are half / twice opt_size, rounded to a multiple of it.
        min_size, max_size (list[int]|None): [H, W] overrides.
        size (list[int]): the export's [H, W]; a fixed (positive) axis has that one size in min, opt and max.
    Returns:
        OrderedDict min / opt / max. Raises ValueError naming the sizes unless min <= opt <= max on both axes
        and a fixed axis is the same in all three.
    """
    def _round(x):
        return max(size_divisor, int(round(x / size_divisor)) * size_divisor)

    lo = list(min_size) if min_size else [_round(o / 2) if s < 0 else s for o, s in zip(opt_size, size)]
    hi = list(max_size) if max_size else [_round(o * 2) if s < 0 else s for o, s in zip(opt_size, size)]
    if not all(a <= o <= b for a, o, b in zip(lo, opt_size, hi)):
        raise ValueError(f'TensorRT size range must have min <= opt <= max on H and W, got min {lo}, '
                         f'opt {list(opt_size)} (the default run size), max {hi}')
    for axis, s in enumerate(size):
        if s > 0 and {lo[axis], opt_size[axis], hi[axis]} != {s}:
            raise ValueError(f"TensorRT size range min {lo}, opt {list(opt_size)}, max {hi} varies "
                             f"{'HW'[axis]}, which this export fixes at {s}")
    return OrderedDict([('min', lo), ('opt', list(opt_size)), ('max', hi)])


def _exclude_post_process(cfg):
    # `exclude_post_process` is the DETR key; ppdet's `export.post_process: False` means the same
    return bool(cfg.get('exclude_post_process', False)) or not (cfg.get('export') or {}).get('post_process', True)


def cpu_fused_attention(cfg):
    """The config's `export.cpu_fused_attention` (default False); ValueError for a value that is not a bool."""
    value = (cfg.get('export') or {}).get('cpu_fused_attention', False)
    if not isinstance(value, bool):
        raise ValueError(f'export.cpu_fused_attention must be True or False, got {value!r}')
    return value


def check_portable(cpu_fused, where):
    """ValueError when `cpu_fused` (an export made with export.cpu_fused_attention) is asked for ONNX."""
    if cpu_fused:
        raise ValueError(f"{where} uses ppdet_rtdetr's compiled CPU operator (export.cpu_fused_attention), which "
                         'ONNX has no form of: export without that option for ONNX, onnxruntime, FastDeploy or '
                         'TensorRT')


def _uses_cpu_ops(model):
    return any(getattr(layer, 'cpu_fused', False) for layer in model.sublayers())


def build_export_model(cfg, weights=None):
    """Create the architecture of `cfg`, load `weights`, switch to eval and fuse RepVGG blocks.

    Call after `resolve_export_size` so that the modules are built with the export `eval_size`.
    Args:
        weights (str|None): a .pdparams path (with or without the suffix) or URL, read with the safe loader
            (a pickle that is not only data is refused); None or '' keeps the random initialisation (logged as
            a warning).
    Returns:
        the architecture (nn.Layer) in eval mode, every `convert_to_deploy()` applied, and with
        `export.cpu_fused_attention` every deformable attention on the compiled CPU operator (built here:
        RuntimeError if it cannot be; ValueError for the 'discrete' sampler).
    """
    cpu_fused = cpu_fused_attention(cfg)  # a wrong value refused before anything is built
    if _exclude_post_process(cfg):
        merge_config({'exclude_post_process': True})
    model = create(cfg.architecture)
    if weights:
        load_model_weights(model, weights)
    else:
        logger.warning('No weights given: exporting the random initialisation.')
    model.eval()
    for layer in model.sublayers():
        if hasattr(layer, 'convert_to_deploy'):
            layer.convert_to_deploy()
    if cpu_fused:
        for layer in model.sublayers():
            if isinstance(layer, MSDeformableAttention):
                layer.fuse_cpu_sampling()
        ops.load_cpu_ops()
    return model


class _ExportModel(nn.Layer):
    """Positional-input view of a ppdet architecture, so that the saved program has named inputs.

    forward(image, im_shape, scale_factor) -> (bbox, bbox_num), and mask third for a model with masks; with
    `raw`, forward(image) -> (boxes, logits).
    """

    def __init__(self, model, raw):
        super().__init__()
        self.model, self.raw = model, raw

    def forward(self, image, im_shape=None, scale_factor=None):
        inputs = {'image': image} if self.raw else {'image': image, 'im_shape': im_shape,
                                                    'scale_factor': scale_factor}
        out = self.model(inputs)
        if 'mask' in out:
            return out['bbox'], out['bbox_num'], out['mask']
        return out['bbox'], out['bbox_num']


def _label_list(cfg):
    """Class names from TestDataset's annotation file, as ppdet's export; generic names if they don't fit."""
    dataset = cfg.get('TestDataset')
    anno_file = dataset.get_anno() if dataset is not None and hasattr(dataset, 'get_anno') else None
    _, catid2name = get_categories(cfg['metric'], anno_file, 'detection_arch')
    names = [str(name) for name in catid2name.values()]
    if len(names) != cfg['num_classes']:
        logger.warning(f"{len(names)} category names found for num_classes={cfg['num_classes']} "
                       f"(annotation file {anno_file}): writing class_0 .. class_{cfg['num_classes'] - 1}.")
        names = [f'class_{i}' for i in range(cfg['num_classes'])]
    return names


def _preprocess(cfg, size):
    """TestReader's sample transforms after Decode, with Resize set to the export size (on a dynamic axis: the
    TestReader Resize's own size, the default run size of the export)."""
    ops = []
    for transform in cfg['TestReader']['sample_transforms'][1:]:
        for name, args in transform.items():
            op = OrderedDict(type=name)
            op.update(args or {})
            if name == 'Resize':
                if op.get('keep_ratio', True):
                    raise ValueError('TestReader Resize must use keep_ratio: False: an RT-DETR export takes '
                                     f'exactly {size[0]}x{size[1]} inputs (one size per batch)')
                if -1 in size and len(op.get('target_size') or []) != 2:
                    raise ValueError(f"TestReader Resize target_size {op.get('target_size')} is not [H, W]: a "
                                     'dynamic-size export takes its default run size from it')
                op['target_size'] = [s if s > 0 else t for s, t in zip(size, op['target_size'])]
                op.setdefault('interp', 1)  # cv2.INTER_LINEAR, ppdet's default
            ops.append(op)
    if not any(op['type'] == 'Resize' for op in ops):
        raise ValueError(f'TestReader has no Resize: the export needs one to {size[0]}x{size[1]}')
    return ops


def build_infer_cfg(cfg, model, size=None, trt_min_size=None, trt_max_size=None):
    """The infer_cfg.yml content of `model` (an OrderedDict, ppdet's fields first).

    Args:
        size (list[int]|None): the export's [H, W] (-1 on a dynamic axis); default `eval_size`.
        trt_min_size, trt_max_size (list[int]|None): [H, W] bounds of a dynamic export's TensorRT range
            (default: see `trt_shape_range`).
    """
    size = list(size or cfg['eval_size'])
    raw, dynamic = bool(model.exclude_post_process), -1 in size
    with_mask = bool(getattr(model, 'with_mask', False))
    if raw and with_mask:
        raise ValueError('exclude_post_process=True with masks (with_mask: true): the deploy scripts have no numpy '
                         'mask post-process; export Mask-RT-DETR with its post-process (the default)')
    preprocess = _preprocess(cfg, size)
    infer_cfg = OrderedDict([
        ('mode', 'paddle'), ('draw_threshold', 0.5), ('metric', cfg['metric']), ('use_dynamic_shape', dynamic),
        ('arch', ARCH), ('min_subgraph_size', MIN_SUBGRAPH_SIZE),
        ('Preprocess', preprocess), ('label_list', _label_list(cfg)),
        ('image_shape', [3] + size), ('exclude_post_process', raw),
        ('num_top_queries', model.post_process.num_top_queries),
        ('use_focal_loss', model.post_process.use_focal_loss),
    ])
    if with_mask:
        infer_cfg['mask'] = True  # ppdet's key: a third output, the masks (PaddleDetection's deploy reads it)
    if _uses_cpu_ops(model):
        infer_cfg['custom_op_library'] = ops.LIBRARY_NAME + '.so'
        infer_cfg['custom_ops'] = [ops.OP_NAME]  # what the deploy scripts check before registering the library
        # the library runs only with the Paddle it was compiled against: the deploy scripts compare
        infer_cfg['custom_op_paddle_version'] = paddle.__version__
    if dynamic:
        divisor = max(model.transformer.feat_strides)
        opt = next(op['target_size'] for op in preprocess if op['type'] == 'Resize')
        infer_cfg['size_divisor'] = divisor
        infer_cfg['trt_shape_range'] = trt_shape_range(opt, divisor, trt_min_size, trt_max_size, size)
    elif trt_min_size or trt_max_size:
        raise ValueError(f'a TensorRT size range needs a dynamic-size export (--image_shape 3 -1 -1); this one '
                         f'is fixed at {size[0]}x{size[1]}')
    return infer_cfg


def write_infer_cfg(data, path):
    """Write an infer_cfg.yml (the export's, and the INT8 folder's) keeping the field order of its OrderedDicts."""
    class _Dumper(yaml.SafeDumper):
        pass

    # keep the field order of the OrderedDicts, written as plain mappings
    _Dumper.add_representer(OrderedDict, lambda d, v: d.represent_mapping('tag:yaml.org,2002:map', v.items()))
    with open(path, 'w') as f:
        yaml.dump(data, f, Dumper=_Dumper, default_flow_style=None, sort_keys=False)


def export_inference_model(cfg, model, save_dir, size=None, trt_min_size=None, trt_max_size=None):
    """Trace `model` (from `build_export_model`) to a static graph and write the deploy folder.

    Args:
        cfg (AttrDict): the config, `eval_size` already set by `resolve_export_size`.
        model (nn.Layer): the eval-mode architecture; it stays a dygraph layer (the trace is of a wrapper).
        save_dir (str): created if missing; receives model.json, model.pdiparams and infer_cfg.yml, and for
            PaddleX inference.json / inference.pdiparams (hard links to the model files) and inference.yml
            (infer_cfg.yml + Global.model_name: `paddlex_files.paddlex_model_name`).
        size (list[int]|None): [H, W] from `resolve_export_size` (-1: dynamic axis); default `eval_size`.
        trt_min_size, trt_max_size (list[int]|None): see `build_infer_cfg`.
    Returns:
        str: save_dir.
    """
    size = list(size or cfg['eval_size'])
    if (-1 in size) != (cfg.get('eval_size') is None) or (-1 not in size and list(cfg['eval_size']) != size):
        # the modules were built for another size: the baked anchors would not fit the traced input
        raise ValueError(f"export size {size} does not match eval_size {cfg.get('eval_size')}: build the model "
                         'after resolve_export_size')
    raw = bool(model.exclude_post_process)
    infer_cfg = build_infer_cfg(cfg, model, size, trt_min_size, trt_max_size)  # its errors before any file
    paddlex_name = paddlex_model_name(cfg)
    os.makedirs(save_dir, exist_ok=True)
    # None: a dynamic axis (batch always)
    input_spec = [InputSpec([None, 3] + [s if s > 0 else None for s in size], 'float32', 'image')]
    if not raw:
        input_spec += [InputSpec([None, 2], 'float32', 'im_shape'),
                       InputSpec([None, 2], 'float32', 'scale_factor')]
    # full_graph: Paddle 3's default (SOT) traces guarded fragments, which jit.save cannot write as one program
    static_model = paddle.jit.to_static(_ExportModel(model, raw), input_spec=input_spec, full_graph=True)
    paddle.jit.save(static_model, os.path.join(save_dir, 'model'))
    if 'custom_op_library' in infer_cfg:
        shutil.copyfile(ops.load_cpu_ops(), os.path.join(save_dir, infer_cfg['custom_op_library']))
    write_infer_cfg(infer_cfg, os.path.join(save_dir, 'infer_cfg.yml'))
    write_paddlex_files(save_dir, infer_cfg, paddlex_name)
    hw = 'x'.join(str(s) if s > 0 else 'any' for s in size)
    logger.info(f"Exported {cfg.architecture} for {hw} inputs (dynamic batch, "
                f"{'raw outputs' if raw else 'with post-process'}) to {save_dir}")
    return save_dir


def export_onnx(model_dir, save_file=None, opset_version=16):
    """Convert an exported folder to ONNX with paddle2onnx (opset 16 has GridSample).

    A model that needs a newer opset (ppdet's SwinTransformer needs 17) is converted at that opset, with a
    warning: paddle2onnx would otherwise abort the process. Its default optimizer (polygraphy) pip-installs
    packages at run time (it upgraded numpy to 2.x here), so optimisation is off.
    The file is then tidied (`onnx_clean`): constants no node reads are gone and, for a folder with an
    infer_cfg.yml, the batch axis is `batch` on every input and output and a dynamic-size export's image axes
    `height` / `width`.
    Returns the path of the written file (model_dir/model.onnx by default); raises RuntimeError when
    paddle2onnx writes nothing (it logs the error and carries on), ValueError (`check_portable`) for an export
    made with export.cpu_fused_attention.
    """
    import onnx
    import paddle2onnx
    infer_cfg_file = os.path.join(model_dir, 'infer_cfg.yml')
    infer_cfg = {}
    if os.path.isfile(infer_cfg_file):
        with open(infer_cfg_file) as f:
            infer_cfg = yaml.safe_load(f) or {}
        check_portable('custom_op_library' in infer_cfg, infer_cfg_file)
    model_file = os.path.join(model_dir, 'model.json')
    if not os.path.exists(model_file):
        model_file = os.path.join(model_dir, 'model.pdmodel')
    save_file = save_file or os.path.join(model_dir, 'model.onnx')
    if os.path.exists(save_file):
        os.remove(save_file)
    paddle2onnx.export(model_file, os.path.join(model_dir, 'model.pdiparams'), save_file,
                       opset_version=opset_version, auto_upgrade_opset=True, enable_onnx_checker=True,
                       optimize_tool='None')
    if not os.path.exists(save_file):
        raise RuntimeError(f'paddle2onnx did not convert {model_file} (see its log above)')
    model = onnx.load(save_file)
    if infer_cfg:  # a detector folder (tools/export_model.py): the contract's axis names too
        clean_onnx_model(model, bool(infer_cfg.get('exclude_post_process', False)), bool(infer_cfg.get('mask', False)))
    else:  # any other paddle.jit.save folder: only what nothing reads goes
        remove_dead_nodes(model.graph)
    onnx.save(model, save_file)
    opset = max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))
    if opset != opset_version:
        logger.warning(f'{save_file} was written at ONNX opset {opset}: the model has ops opset {opset_version} lacks.')
    return save_file
