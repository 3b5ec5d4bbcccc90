"""The official PaddleDetection (develop) RT-DETR in a benchmark process: import it, export it at a fixed size.

    python benchmarks/official.py --repo DIR --config configs/rtdetr/rtdetr_r50vd_6x_coco.yml \
        --weights W.pdparams --out DIR [--size 640]

`--repo` is a PaddleDetection checkout, put first on ``sys.path`` so that its ``ppdet`` replaces paddledet
2.6.0 in this process (run it with PYTHONPATH unset). Fixes that make it import and export on Paddle 3.3 here,
none in its RT-DETR modules' arithmetic:
- ``imgaug`` (imported by its lane-detection datasets, not installed) is stubbed;
- for training (benchmarks/train_step.py), ``norm_type: bn`` replaces sync_bn (a CPU process has no NCCL);
- export: its encoder upsamples with ``F.interpolate(scale_factor=2.)``, whose PIR ``scale`` attribute neither
  paddle2onnx 2.1 ("the 0th elementwise MUST be ir::FloatAttribute") nor Paddle Inference's oneDNN executor
  ("ConvertPirAttribute2RuntimeAttribute not support pir::ArrayAttribute<pir::DoubleAttribute>") accepts: the
  same op is exported with the output size instead. oneDNN still fails on the op's attribute, so its oneDNN
  figures are taken with ``onednn_placement_pass`` deleted (engine ``paddle_mkldnn_official``): the fusion
  passes still run, the remaining ops take Paddle's own CPU kernels.
The exported folder holds model.json / model.pdiparams; the caller adds infer_cfg.yml and model.onnx.
"""
import argparse
import os
import sys
import types

__all__ = ['import_official', 'export_official']


def import_official(repo):
    """Put `repo`'s ppdet first on sys.path, stub imgaug; returns ppdet.core.workspace of the checkout."""
    from unittest import mock

    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith('__'):
                raise AttributeError(name)
            return mock.MagicMock()

    sys.path.insert(0, repo)
    for name in ('imgaug', 'imgaug.augmenters', 'imgaug.augmentables', 'imgaug.augmentables.lines',
                 'imgaug.augmentables.segmaps', 'imgaug.augmentables.kps', 'imgaug.augmentables.bbs'):
        sys.modules[name] = _Stub(name)
    from ppdet.core import workspace
    assert os.path.dirname(sys.modules['ppdet'].__file__).startswith(os.path.abspath(repo)), 'not the checkout'
    return workspace


def _interpolate_to_size():
    """F.interpolate with `scale_factor` turned into the output size (see the module doc)."""
    import paddle.nn.functional as F
    interpolate = F.interpolate

    def to_size(x, size=None, scale_factor=None, **kwargs):
        if size is None and scale_factor is not None:
            sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
            size = [int(x.shape[2] * sh), int(x.shape[3] * sw)]
        return interpolate(x, size=size, **kwargs)
    F.interpolate = to_size


def export_official(repo, config, weights, out, size=640):
    """Export the official model of `config` (relative to `repo`) with `weights` at size x size and any batch
    size, as its tools/export_model.py does (input specs with batch None)."""
    import paddle
    workspace = import_official(repo)
    cfg = workspace.load_config(os.path.join(repo, config))
    workspace.merge_config({'pretrain_weights': ''})
    model = workspace.create(cfg.architecture)
    state = paddle.load(weights)
    mismatch = sorted(set(model.state_dict()) ^ set(state))
    if mismatch:
        raise ValueError(f'{weights} and the official {config} differ in {len(mismatch)} names, e.g. {mismatch[:3]}')
    model.set_state_dict(state)
    model.eval()
    _interpolate_to_size()
    spec = [{'image': paddle.static.InputSpec([None, 3, size, size], 'float32', 'image'),
             'im_shape': paddle.static.InputSpec([None, 2], 'float32', 'im_shape'),
             'scale_factor': paddle.static.InputSpec([None, 2], 'float32', 'scale_factor')}]
    os.makedirs(out, exist_ok=True)
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), os.path.join(out, 'model'),
                    input_spec=spec)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repo', required=True)
    parser.add_argument('--config', required=True, help='relative to --repo')
    parser.add_argument('--weights', required=True, help='a state dict with the official names (ours has them)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--size', type=int, default=640)
    args = parser.parse_args(argv)
    export_official(os.path.abspath(args.repo), args.config, args.weights, args.out, args.size)


if __name__ == '__main__':
    main()
