"""Export a config + weights for deployment, as PaddleDetection's tools/export_model.py does.

    python tools/export_model.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml -o weights=output/best_model
        [--output_dir output_inference] [--image_shape 3 480 640 | 3 -1 -1] [--onnx]
        [--trt_min_size H W] [--trt_max_size H W]
        [-o exclude_post_process=True] [-o trt=True]
        [-o RTDETRDeformableTransformer.cross_attn_method=discrete]

Writes output_dir/<config name>/{model.json, model.pdiparams, infer_cfg.yml} (and model.onnx with --onnx)
for deploy/python/infer.py, deploy/onnxruntime/infer.py and FastDeploy, and PaddleX's names for the same files
(inference.json / inference.pdiparams as hard links, inference.yml = infer_cfg.yml + Global.model_name: the
PaddleX model of the backbone, or `-o export.paddlex_model_name=RT-DETR-L`). By default the input size is fixed
at export (anchors and position embeddings are baked for it: --image_shape, else eval_size); -1 for H and/or
W exports a graph that computes them from the input, so one export runs at any size (the deploy scripts take
--target_size); --trt_min_size / --trt_max_size bound its TensorRT engine (default: half / twice the config's
test size). The batch is always dynamic.
RepVGG blocks are always fused; `trt=True` writes TensorRT-friendly activations.
`-o export.cpu_fused_attention=True`: for Paddle Inference on CPU only, the deformable-attention sampling as
one compiled operator (built on first use with a C++ compiler; R18vd in 0.84 of the time under oneDNN, same
numbers); the folder carries its library (ppdet_rtdetr/export.py, deploy/README.md).
"""
import os

import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet_rtdetr.cli import ToolArgsParser, apply_overrides
from ppdet_rtdetr.device import resolve_device
from ppdet_rtdetr.config import load_config
from ppdet_rtdetr.engine import safe_load
from ppdet_rtdetr.export import (build_export_model, check_portable, cpu_fused_attention, export_inference_model,
                                 export_onnx, resolve_export_size)


def parse_args(argv=None):
    parser = ToolArgsParser(__doc__)
    parser.add_argument('--output_dir', default='output_inference', help='parent of the exported folder')
    parser.add_argument('--image_shape', nargs=3, type=int, default=None, metavar=('C', 'H', 'W'),
                        help='input size to bake (default: eval_size of the config); -1: dynamic axis')
    parser.add_argument('--trt_min_size', nargs=2, type=int, default=None, metavar=('H', 'W'),
                        help='smallest input of a dynamic export\'s TensorRT range (infer_cfg.yml)')
    parser.add_argument('--trt_max_size', nargs=2, type=int, default=None, metavar=('H', 'W'),
                        help='largest input of a dynamic export\'s TensorRT range (infer_cfg.yml)')
    parser.add_argument('--onnx', action='store_true', help='also write model.onnx (paddle2onnx, opset 16)')
    safe_load.add_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    apply_overrides(args.opt)
    if getattr(args, safe_load.CONFIG_KEY, False):
        cfg[safe_load.CONFIG_KEY] = True
    # export traces on the CPU whatever the config says; the exported model runs on any device
    cfg['use_gpu'] = False
    resolve_device(cfg)
    if args.onnx:  # refused before anything is written
        check_portable(cpu_fused_attention(cfg), '--onnx: this config')
    size = resolve_export_size(cfg, args.image_shape)
    model = build_export_model(cfg, cfg.get('weights'))
    name = os.path.splitext(os.path.basename(args.config))[0]
    save_dir = export_inference_model(cfg, model, os.path.join(args.output_dir, name), size, args.trt_min_size,
                                      args.trt_max_size)
    if args.onnx:
        export_onnx(save_dir)


if __name__ == '__main__':
    main()
