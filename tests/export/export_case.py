"""One export case of tests/export, run in its own process (ppdet's config is a process-wide global, so cases
with different `-o` overrides must not share one).

    python tests/export/export_case.py OUT_DIR IMAGES_DIR -- -c CONFIG <tools/export_model.py args>

1. writes OUT_DIR/weights.pdparams: CONFIG's model (with the case's `-o` overrides) with seed 0, perturbed
   with a fixed numpy seed;
2. runs tools/export_model.py with the given args plus `-o weights=... --output_dir OUT_DIR` (and `--onnx`
   when paddle2onnx is installed);
3. rebuilds the same config as a dygraph model (unfused RepVGG, the same weights) and writes
   OUT_DIR/reference.npz: `sizes` [[h, w], ...] (the export size; for a dynamic-size export DYNAMIC_SIZES, each
   run by a model built with that `eval_size`, i.e. baked anchors, what a fixed export of that size computes),
   and per size `<key>@<h>x<w>`: a fixed batch of 3 random images (each with its own scale_factor), their raw
   outputs and the post-processed `bbox` / `bbox_num`; for every image file in IMAGES_DIR the detections after
   ppdet's own TestReader transforms at the export's default size (`file_<name>` keys), and for a dynamic
   export also at the other sizes (`file_<name>@<h>x<w>`) and at the keep-ratio size rounded to the stride
   (`file_<name>@keep`). A model with masks (Mask-RT-DETR) adds `mask@<h>x<w>` and `mask_<file key>` (its
   exports have no raw outputs, so no `boxes` / `logits`).
"""
import glob
import importlib.util
import os
import sys

import numpy as np
import paddle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import ppdet_rtdetr  # noqa: F401,E402  (registers modules)
from ppdet.core import workspace  # noqa: E402
from ppdet.core.workspace import create, load_config  # noqa: E402
from ppdet.data.transform import operators  # noqa: E402
from ppdet.utils.checkpoint import load_weight  # noqa: E402

ORIGINAL_SIZES = [(120, 200), (64, 96), (300, 150)]  # (h, w) the random batch pretends to come from
DYNAMIC_SIZES = [(64, 96), (96, 64), (128, 160)]  # what a dynamic-size export is checked at (multiples of 32)
STRIDE = 32


def _write_random_weights(config, opts, path):
    """Seeded weights of `config` with the `-o` overrides `opts` (dict), perturbed so that scores spread over
    (0, 1) without near-ties (the initialisation gives every query the same 0.01 prior and zero box deltas)."""
    paddle.seed(0)
    cfg = load_config(config)
    workspace.merge_config(dict(opts))
    model = create(cfg.architecture)
    rng = np.random.RandomState(0)
    for name, param in model.state_dict().items():
        noise = rng.normal(0, 0.5 if 'score_head' in name else 0.1, param.shape).astype('float32')
        # BN statistics too (variances kept positive), so that folding them into the RepVGG convs is tested
        param.set_value(param.numpy() * np.exp(noise) if name.endswith('_variance') else param.numpy() + noise)
    paddle.save(model.state_dict(), path)


def _load_export_tool():
    spec = importlib.util.spec_from_file_location('export_model', os.path.join(ROOT, 'tools', 'export_model.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keep_ratio_size(h, w, target):
    """(H, W) of deploy's keep-ratio mode, written out independently: ppdet's keep_ratio scale (the short side
    to min(target) unless the long side passes max(target)), then each side to the nearest multiple of 32."""
    scale = min(min(target) / min(h, w), max(target) / max(h, w))
    return tuple(max(STRIDE, int(round(s * scale / STRIDE)) * STRIDE) for s in (h, w))


def _ppdet_reader_inputs(cfg, path, size):
    """An image file through ppdet's TestReader sample transforms (Resize to `size`, as ppdet's export
    writes it into infer_cfg.yml), as the infer data loader does. `size` 'keep': the keep-ratio size."""
    sample = {'im_file': path}
    for transform in cfg['TestReader']['sample_transforms']:
        for name, args in transform.items():
            if name == 'Resize':
                target = size
                if size == 'keep':
                    h, w = sample['image'].shape[:2]
                    target = _keep_ratio_size(h, w, DYNAMIC_SIZES[0])
                args = dict(args or {}, target_size=list(target))
            sample = getattr(operators, name)(**(args or {}))(sample)
    return {k: paddle.to_tensor(np.asarray(sample[k], 'float32')[None]) for k in ('image', 'im_shape', 'scale_factor')}


def _run(model, inputs, raw):
    """(bbox, bbox_num) of the model, and its masks third when it has them (not with raw outputs)."""
    model.exclude_post_process = raw
    with paddle.no_grad():
        out = model(inputs)
    with_mask = 'mask' in out and not raw
    return (out['bbox'].numpy(), out['bbox_num'].numpy()) + ((out['mask'].numpy(),) if with_mask else ())


def main(argv):
    out_dir, images_dir = argv[:2]
    export_args = argv[argv.index('--') + 1:]
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, 'weights.pdparams')
    tool = _load_export_tool()
    _write_random_weights(export_args[export_args.index('-c') + 1], tool.parse_args(export_args).opt or {}, weights)
    # without paddle2onnx the ONNX tests skip; the Paddle Inference ones still run. A CPU-fused export has no
    # ONNX form (the tool refuses --onnx)
    fused = 'export.cpu_fused_attention=True' in export_args
    onnx = ['--onnx'] if importlib.util.find_spec('paddle2onnx') and not fused else []
    # a second `-o`: the tool must merge it with the case's own (plain ppdet would drop the first)
    tool.main(export_args + ['-o', f'weights={weights}', '--output_dir', out_dir] + onnx)
    cfg = workspace.global_config  # the config export_model built, overrides included
    dynamic = cfg['eval_size'] is None
    sizes = DYNAMIC_SIZES if dynamic else [tuple(cfg['eval_size'])]
    ref = {'sizes': np.array(sizes)}
    paths = sorted(glob.glob(os.path.join(images_dir, '*.png')))
    for h, w in sizes:
        workspace.merge_config({'eval_size': [h, w]})
        model = create(cfg.architecture)
        load_weight(model, weights)
        model.eval()
        rng = np.random.RandomState(7)
        image = rng.rand(3, 3, h, w).astype('float32')
        scale_factor = np.array([[h / oh, w / ow] for oh, ow in ORIGINAL_SIZES], 'float32')
        inputs = {'image': paddle.to_tensor(image), 'im_shape': paddle.to_tensor(np.array([[h, w]] * 3, 'float32')),
                  'scale_factor': paddle.to_tensor(scale_factor)}
        at = f'@{h}x{w}'
        ref['image' + at], ref['scale_factor' + at] = image, scale_factor
        if not cfg.get('with_mask'):  # a mask model's raw outputs are not exported (the tool refuses)
            ref['boxes' + at], ref['logits' + at] = _run(model, inputs, raw=True)[:2]
        ref['bbox' + at], ref['bbox_num' + at], *mask = _run(model, inputs, raw=False)
        if mask:
            ref['mask' + at] = mask[0]
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            # the export's default size is sizes[0] (TestReader's Resize); the others only for a dynamic export
            key = f'file_{name}' + ('' if (h, w) == sizes[0] else at)
            ref[key], _, *mask = _run(model, _ppdet_reader_inputs(cfg, path, (h, w)), raw=False)
            if mask:
                ref['mask_' + key] = mask[0]
    if dynamic:
        workspace.merge_config({'eval_size': None})  # anchors computed for each image's own size
        model = create(cfg.architecture)
        load_weight(model, weights)
        model.eval()
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            ref[f'file_{name}@keep'], _, *mask = _run(model, _ppdet_reader_inputs(cfg, path, 'keep'), raw=False)
            if mask:
                ref[f'mask_file_{name}@keep'] = mask[0]
    np.savez(os.path.join(out_dir, 'reference.npz'), **ref)


if __name__ == '__main__':
    main(sys.argv[1:])
