"""Run an exported RT-DETR folder's model.onnx (tools/export_onnx.py) with OpenVINO on the CPU.

    python deploy/openvino/infer.py --model_dir output_inference/rtdetr_r50vd_6x_coco --image_file demo.jpg
        [--image_dir dir | --video_file v.mp4] [--batch_size 4] [--threshold 0.5] [--cpu_threads 4]
        [--target_size 480 640] [--keep_ratio]   (a dynamic-size export: tools/export_model.py --image_shape 3 -1 -1)
        [--precision f32|bf16|f16]

Needs openvino, numpy, OpenCV and PyYAML (not Paddle). OpenVINO reads the untouched ONNX file; its batch (and a
dynamic-size export's H x W) stay dynamic, so one compiled model serves every batch size and input size.
Preprocessing, the baked-size check, drawing and results.json are deploy/python's, as for deploy/onnxruntime.
"""
import argparse
import os
import sys

import openvino as ov

# the shared deploy modules (preprocess, post-process, command line) live in deploy/python
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'python'))
from detector import Detector, add_io_args, run  # noqa: E402

__all__ = ['OpenVINODetector', 'PRECISIONS']

PRECISIONS = ('f32', 'bf16', 'f16')


class OpenVINODetector(Detector):
    """`Detector` on an OpenVINO compiled model.

    Args:
        model_dir (str): exported folder holding infer_cfg.yml and the ONNX file.
        model_file (str|None): the ONNX file (default: model_dir/model.onnx).
        device (str): an OpenVINO device name, 'CPU' by default (ValueError naming the available ones otherwise).
        cpu_threads (int): inference threads.
        precision (str): 'f32' (default: the other engines' numbers), or 'bf16' / 'f16', OpenVINO's own default on
            CPUs that have them (AMX / AVX512-BF16 Xeons pick bf16): faster there, scores off by ~1e-2.
        target_size, keep_ratio: run-time size of a dynamic-size export (see `Detector`).
    """

    def __init__(self, model_dir, model_file=None, device='CPU', cpu_threads=1, target_size=None, keep_ratio=False,
                 precision='f32'):
        super().__init__(model_dir, target_size, keep_ratio)
        model_file = model_file or os.path.join(model_dir, 'model.onnx')
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f'{model_file} not found: convert it with '
                                    f'tools/export_onnx.py --model_dir {model_dir}')
        core = ov.Core()
        device = device.upper()
        if device not in core.available_devices:
            raise ValueError(f'--device {device}: OpenVINO here has {core.available_devices}')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        config = {'INFERENCE_PRECISION_HINT': precision}
        if device == 'CPU':
            config.update(INFERENCE_NUM_THREADS=cpu_threads, PERFORMANCE_HINT='LATENCY')
        self.compiled = core.compile_model(core.read_model(model_file), device, config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def _run(self, feeds):
        results = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        return [results[port].copy() for port in self.compiled.outputs]


def main(argv=None):
    parser = add_io_args(argparse.ArgumentParser(description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument('--model_file', default=None, help='default: <model_dir>/model.onnx')
    parser.add_argument('--precision', default='f32', choices=PRECISIONS,
                        help='inference precision (bf16 / f16: faster where the CPU has them, less exact)')
    args = parser.parse_args(argv)
    return run(OpenVINODetector(args.model_dir, args.model_file, args.device, args.cpu_threads, args.target_size,
                                args.keep_ratio, args.precision), args)


if __name__ == '__main__':
    main()
