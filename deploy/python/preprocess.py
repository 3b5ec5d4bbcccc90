"""Preprocessing of an exported RT-DETR folder, read from its infer_cfg.yml (numpy + OpenCV only).

The ops reproduce ppdet's reader transforms (Decode, Resize, NormalizeImage, Permute) so that a deployed
model sees the pixels the dygraph model saw in eval, and they record what `im_shape` / `scale_factor`
need: boxes come back in original-image pixels only if scale_factor = network size / original size.
"""
import os

import cv2
import numpy as np
import yaml

__all__ = ['load_infer_cfg', 'find_model_files', 'register_custom_ops', 'Preprocessor',
           'check_input_size', 'run_size_ops']


def load_infer_cfg(model_dir):
    """infer_cfg.yml of an exported folder as a dict (FileNotFoundError names the missing file)."""
    path = os.path.join(model_dir, 'infer_cfg.yml')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: export the model with tools/export_model.py first')
    with open(path) as f:
        return yaml.safe_load(f)


def find_model_files(model_dir):
    """(program file, params file) of an exported folder: Paddle 3's model.json, else a legacy model.pdmodel."""
    for name in ('model.json', 'model.pdmodel'):
        if os.path.isfile(os.path.join(model_dir, name)):
            return os.path.join(model_dir, name), os.path.join(model_dir, 'model.pdiparams')
    raise FileNotFoundError(f'neither model.json nor model.pdmodel in {model_dir}')


def register_custom_ops(model_dir, device='CPU'):
    """Register the operator library an exported folder carries (infer_cfg.yml `custom_op_library`: an export
    made with export.cpu_fused_attention) in this process; call before creating its predictor. Other exports:
    nothing to do. Operators already registered (`custom_ops`, e.g. by another folder's copy of the library)
    are not registered again: Paddle aborts the process on a second copy. ValueError for a device other than
    CPU (the operator runs on the CPU only) or for another Paddle version than the one the library was compiled
    against (infer_cfg.yml `custom_op_paddle_version`; a folder without it is not checked), FileNotFoundError
    naming a missing library."""
    infer_cfg = load_infer_cfg(model_dir)
    library = infer_cfg.get('custom_op_library')
    if not library:
        return
    if device.upper() != 'CPU':
        raise ValueError(f'{model_dir} was exported with export.cpu_fused_attention: its operator {library} runs '
                         f'on the CPU only, not on {device}; export without the option for GPU / TensorRT')
    path = os.path.join(model_dir, library)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: {model_dir}/infer_cfg.yml names it in custom_op_library (the '
                                'export writes it next to the model)')
    import paddle
    built_with = infer_cfg.get('custom_op_paddle_version')
    if built_with is not None and str(built_with) != paddle.__version__:
        # a library compiled against other Paddle headers may crash or compute garbage: refuse before loading it
        raise ValueError(f'{path} was compiled for Paddle {built_with} (infer_cfg.yml custom_op_paddle_version), '
                         f'this process runs Paddle {paddle.__version__}: deploy with Paddle {built_with}, or '
                         'export again with this Paddle (or without export.cpu_fused_attention)')
    ops = infer_cfg.get('custom_ops') or []
    if not ops or not set(ops) <= set(paddle.base.core.get_all_op_names()):
        paddle.utils.cpp_extension.load_op_meta_info_and_register_op(path)


def _resize(im, info, target_size, keep_ratio=True, interp=cv2.INTER_LINEAR, size_divisor=None, **_):
    h, w = im.shape[:2]
    if keep_ratio:
        scale = min(min(target_size) / min(h, w), max(target_size) / max(h, w))
        scale_y = scale_x = scale
        if size_divisor:
            # each side to the nearest multiple of the stride (a dynamic export's keep-ratio mode); scale_factor
            # keeps the exact per-axis scale, so boxes still land on the original image
            scale_y, scale_x = (max(size_divisor, int(round(s * scale / size_divisor)) * size_divisor) / s
                                for s in (h, w))
    else:
        scale_y, scale_x = target_size[0] / h, target_size[1] / w
    # fx/fy (not dsize) as ppdet's Resize, so that OpenCV samples the same source pixels
    im = cv2.resize(im, None, None, fx=scale_x, fy=scale_y, interpolation=interp)
    info['im_shape'] = np.array(im.shape[:2], dtype='float32')
    info['scale_factor'] = np.array([scale_y, scale_x], dtype='float32')
    return im


def _normalize(im, info, mean, std, is_scale=True, norm_type='mean_std', **_):
    # the same float32 / float64 steps as ppdet's NormalizeImage, so that the pixels match bit for bit
    im = im.astype('float32', copy=False)
    if is_scale:
        im = im * (1.0 / 255.0)
    if norm_type == 'mean_std':
        im = (im - np.array(mean)).astype('float32')
        im = (im / np.array(std)).astype('float32')
    return im


def _permute(im, info, **_):
    # [h, w, c] -> [c, h, w]
    return im.transpose(2, 0, 1).copy()


_OPS = {'Resize': _resize, 'NormalizeImage': _normalize, 'Permute': _permute}


class Preprocessor:
    """The `Preprocess` list of an infer_cfg.yml, applied to RGB images.

    Args:
        ops (list[dict]): `{type: name, **args}` entries; Resize, NormalizeImage and Permute are supported
            (an unknown type is a ValueError at construction, not a silent skip).

    __call__(images: list of RGB uint8 [h_i, w_i, 3]) -> dict of float32 arrays `image` [b, 3, H, W],
    `im_shape` [b, 2] (H, W) and `scale_factor` [b, 2] (H / h_i, W / w_i). Images of different sizes may
    share a batch; they must all come out at the same H x W (a ValueError otherwise).
    """

    def __init__(self, ops):
        self.ops = []
        for op in ops:
            op = dict(op)
            name = op.pop('type')
            if name not in _OPS:
                raise ValueError(f"unsupported preprocess op '{name}' in infer_cfg.yml (known: {sorted(_OPS)})")
            self.ops.append((_OPS[name], op))

    def _one(self, im):
        info = {'im_shape': np.array(im.shape[:2], 'float32'), 'scale_factor': np.ones(2, 'float32')}
        for fn, args in self.ops:
            im = fn(im, info, **args)
        return im, info

    def __call__(self, images):
        outs = [self._one(im) for im in images]
        shapes = {im.shape for im, _ in outs}
        if len(shapes) != 1:
            raise ValueError(f'preprocessed images differ in shape {sorted(shapes)}: a batch needs one size '
                             '(keep_ratio gives each image its own: use batch size 1, or a fixed target size)')
        return {'image': np.stack([im for im, _ in outs]),
                'im_shape': np.stack([info['im_shape'] for _, info in outs]),
                'scale_factor': np.stack([info['scale_factor'] for _, info in outs])}


def check_input_size(image, image_shape):
    """Raise ValueError if `image` [b, 3, H, W] is not the size the export baked (`image_shape` [3, H, W];
    -1 on a dynamic axis takes any size).

    A mismatch would otherwise fail deep in the graph (a broadcast error between the memory and the baked
    position embedding) or, in other engines, give wrong boxes.
    """
    if image_shape is None:
        return
    got, want = list(image.shape[2:]), [int(s) for s in image_shape[1:]]
    if any(g != s for g, s in zip(got, want) if s > 0):
        want = ['any' if s < 0 else s for s in want]
        raise ValueError(f'input image is {got[0]}x{got[1]} (HxW) but this model was exported for '
                         f'{want[0]}x{want[1]}: its anchors and position embeddings are baked for that size. '
                         f'Resize the input to {want[0]}x{want[1]} or re-export with '
                         f'--image_shape 3 {got[0]} {got[1]}.')


def run_size_ops(ops, infer_cfg, target_size=None, keep_ratio=False):
    """`ops` (infer_cfg.yml's Preprocess) resizing to the run-time size of a dynamic-size export.

    Args:
        target_size (list[int]|None): [H, W] to resize to (default: the export's own Resize size).
        keep_ratio (bool): keep each image's aspect ratio (ppdet's keep_ratio rule on target_size), then round
            each side to a multiple of infer_cfg's `size_divisor` (the model's largest stride).
    Returns:
        list[dict]: a copy of `ops`. Raises ValueError, naming the export's size, for a fixed-size export or a
        size the export fixed.
    """
    if not (target_size or keep_ratio):
        return ops
    image_shape = [int(s) for s in infer_cfg.get('image_shape') or []]
    if -1 not in image_shape[1:]:
        raise ValueError(f"a run-time size (--target_size / --keep_ratio) needs a dynamic-size export, and this "
                         f"model was exported for {'x'.join(map(str, image_shape[1:])) or 'one size'} only (its "
                         "anchors and position embeddings are baked): re-export with --image_shape 3 -1 -1")
    if target_size is not None:
        target_size = [int(s) for s in target_size]
        if len(target_size) != 2 or min(target_size) <= 0:
            raise ValueError(f'--target_size must be two positive integers H W, got {target_size}')
        for axis, (s, fixed) in enumerate(zip(target_size, image_shape[1:])):
            if fixed > 0 and s != fixed:
                raise ValueError(f"--target_size {target_size[0]} {target_size[1]}: this export fixes "
                                 f"{'HW'[axis]} at {fixed}")
    if keep_ratio and max(image_shape[1:]) > 0:
        raise ValueError(f'--keep_ratio changes H and W, and this export fixes one of them: {image_shape}')
    out = []
    for op in ops:
        op = dict(op)
        if op['type'] == 'Resize':
            op['target_size'] = list(target_size or op['target_size'])
            op['keep_ratio'] = bool(keep_ratio)
            if keep_ratio:
                op['size_divisor'] = int(infer_cfg.get('size_divisor', 32))
        out.append(op)
    return out
