"""Post-training INT8 quantization of an exported RT-DETR for onnxruntime on CPU (static QDQ).

    python tools/quantize.py -c configs/demo/rtdetr_r18vd_shapes.yml \
        --model_dir output_inference/rtdetr_r18vd_shapes --output_dir output_inference/rtdetr_r18vd_shapes_int8
        [--calib_images 32] [--calib_dir images/] [--calib_split TrainDataset]
        [--fp32_groups decoder_linear ...] [--tolerance 0.05] [--method MinMax] [--cpu_threads 2]

The export folder needs model.onnx (tools/export_model.py --onnx). Calibration reads `--calib_images` images
spread over the config's TrainDataset (or `--calib_dir`) through the config's TestReader at the exported size:
the deploy preprocessing. Without --fp32_groups a sensitivity sweep quantizes each part of the model alone, then
puts parts back to float32, the most sensitive first, until the detections of the whole model move by at most
--tolerance (see docs/int8.md). The output folder
holds model.onnx, infer_cfg.yml (with a `quantization` section) and quant_report.json; run it with
deploy/onnxruntime/infer.py --model_dir <output_dir>.
"""
import os

import onnx
import ppdet_rtdetr  # noqa: F401  (registers modules, reader transforms)
import yaml

from ppdet_rtdetr.cli import ToolArgsParser, apply_overrides
from ppdet_rtdetr.config import load_config
from ppdet_rtdetr.quant import (GROUPS, ConfigPreprocess, ImageCalibrationReader, dataset_image_paths,
                                folder_image_paths, pick_evenly, quantize_export)


def parse_args(argv=None):
    parser = ToolArgsParser()
    parser.add_argument('--model_dir', required=True, help='exported folder with infer_cfg.yml and model.onnx')
    parser.add_argument('--output_dir', required=True, help='the INT8 folder to write')
    parser.add_argument('--calib_images', type=int, default=32, help='number of calibration images')
    parser.add_argument('--calib_dir', default=None, help='a folder of calibration images (default: the dataset)')
    parser.add_argument('--calib_split', default='TrainDataset', help='dataset of the config to calibrate on')
    parser.add_argument('--fp32_groups', nargs='*', default=None, choices=GROUPS,
                        help='keep these parts in float32 and skip the sensitivity sweep')
    parser.add_argument('--tolerance', type=float, default=0.05,
                        help='largest detection drift (mean |score change| + 1 - mean IoU) of the INT8 model')
    parser.add_argument('--method', default='MinMax', choices=['MinMax', 'Entropy', 'Percentile'])
    parser.add_argument('--cpu_threads', type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    apply_overrides(args.opt)
    for name in ('infer_cfg.yml', 'model.onnx'):
        if not os.path.isfile(os.path.join(args.model_dir, name)):
            raise FileNotFoundError(f'{os.path.join(args.model_dir, name)} not found: export with '
                                    'tools/export_model.py --onnx (or tools/export_onnx.py) first')
    with open(os.path.join(args.model_dir, 'infer_cfg.yml')) as f:
        image_shape = yaml.safe_load(f)['image_shape']
    if args.calib_dir:
        paths, source = folder_image_paths(args.calib_dir), args.calib_dir
    else:
        paths, source = dataset_image_paths(cfg, args.calib_split), f'{args.calib_split} of {args.config}'
    paths = pick_evenly(paths, args.calib_images)
    model = onnx.load(os.path.join(args.model_dir, 'model.onnx'), load_external_data=False)
    reader = ImageCalibrationReader(paths, ConfigPreprocess(cfg, image_shape), [i.name for i in model.graph.input])
    return quantize_export(args.model_dir, args.output_dir, reader, f'{len(paths)} images of {source}',
                           args.fp32_groups, args.tolerance, args.method, args.cpu_threads)


if __name__ == '__main__':
    main()
