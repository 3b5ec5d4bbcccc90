"""Convert an exported folder (tools/export_model.py) to ONNX for onnxruntime / FastDeploy.

    python tools/export_onnx.py --model_dir output_inference/rtdetr_r50vd_6x_coco [--save_file x.onnx]

Runs paddle2onnx at opset 16 (GridSample; the discrete sampler needs none) with its optimizer off: the
default one (polygraphy) pip-installs packages at run time. Both samplers convert with no edits.
"""
import argparse

from ppdet_rtdetr.export import export_onnx


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model_dir', required=True, help='folder with model.json and model.pdiparams')
    parser.add_argument('--save_file', default=None, help='default: <model_dir>/model.onnx')
    parser.add_argument('--opset_version', type=int, default=16)
    args = parser.parse_args(argv)
    print(export_onnx(args.model_dir, args.save_file, args.opset_version))


if __name__ == '__main__':
    main()
