"""One export case of tests/export, run in its own process (ppdet's config is a process-wide global, so cases
with different `-o` overrides must not share one).

    python tests/export/export_case.py OUT_DIR IMAGES_DIR -- -c CONFIG <tools/export_model.py args>

1. writes OUT_DIR/weights.pdparams: CONFIG's model with seed 0, perturbed with a fixed numpy seed (the same
   in every case, whatever the export args);
2. runs tools/export_model.py with the given args plus `-o weights=... --output_dir OUT_DIR` (and `--onnx`
   when paddle2onnx is installed);
3. rebuilds the same config as a dygraph model (unfused RepVGG, the same weights) and writes
   OUT_DIR/reference.npz: for a fixed batch of 3 random images at the export size (each with its own
   scale_factor) the raw outputs and the post-processed `bbox` / `bbox_num`, and for every image file in
   IMAGES_DIR the detections after ppdet's own TestReader transforms (`file_<name>` keys).
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


def _write_random_weights(config, path):
    """Seeded weights, perturbed so that scores spread over (0, 1) without near-ties (the initialisation
    gives every query the same 0.01 prior and zero box deltas)."""
    paddle.seed(0)
    model = create(load_config(config).architecture)
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


def _ppdet_reader_inputs(cfg, path):
    """An image file through ppdet's TestReader sample transforms (Resize to the export size, as ppdet's export
    writes it into infer_cfg.yml), as the infer data loader does."""
    sample = {'im_file': path}
    for transform in cfg['TestReader']['sample_transforms']:
        for name, args in transform.items():
            args = dict(args or {}, target_size=list(cfg['eval_size'])) if name == 'Resize' else (args or {})
            sample = getattr(operators, name)(**args)(sample)
    return {k: paddle.to_tensor(np.asarray(sample[k], 'float32')[None]) for k in ('image', 'im_shape', 'scale_factor')}


def _run(model, inputs, raw):
    model.exclude_post_process = raw
    with paddle.no_grad():
        out = model(inputs)
    return out['bbox'].numpy(), out['bbox_num'].numpy()


def main(argv):
    out_dir, images_dir = argv[:2]
    export_args = argv[argv.index('--') + 1:]
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, 'weights.pdparams')
    _write_random_weights(export_args[export_args.index('-c') + 1], weights)
    tool = _load_export_tool()
    # without paddle2onnx the ONNX tests skip; the Paddle Inference ones still run
    onnx = ['--onnx'] if importlib.util.find_spec('paddle2onnx') else []
    # a second `-o`: the tool must merge it with the case's own (plain ppdet would drop the first)
    tool.main(export_args + ['-o', f'weights={weights}', '--output_dir', out_dir] + onnx)
    cfg = workspace.global_config  # the config export_model built, overrides included

    model = create(cfg.architecture)
    load_weight(model, weights)
    model.eval()
    h, w = cfg['eval_size']
    rng = np.random.RandomState(7)
    image = rng.rand(3, 3, h, w).astype('float32')
    scale_factor = np.array([[h / oh, w / ow] for oh, ow in ORIGINAL_SIZES], 'float32')
    inputs = {'image': paddle.to_tensor(image), 'im_shape': paddle.to_tensor(np.array([[h, w]] * 3, 'float32')),
              'scale_factor': paddle.to_tensor(scale_factor)}
    ref = {'image': image, 'scale_factor': scale_factor}
    ref['boxes'], ref['logits'] = _run(model, inputs, raw=True)
    ref['bbox'], ref['bbox_num'] = _run(model, inputs, raw=False)
    for path in sorted(glob.glob(os.path.join(images_dir, '*.png'))):
        name = os.path.splitext(os.path.basename(path))[0]
        ref[f'file_{name}'] = _run(model, _ppdet_reader_inputs(cfg, path), raw=False)[0]
    np.savez(os.path.join(out_dir, 'reference.npz'), **ref)


if __name__ == '__main__':
    main(sys.argv[1:])
