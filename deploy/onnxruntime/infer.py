"""Run an exported RT-DETR folder's model.onnx (tools/export_onnx.py) with onnxruntime.

    python deploy/onnxruntime/infer.py --model_dir output_inference/rtdetr_r50vd_6x_coco --image_file demo.jpg
        [--image_dir dir | --video_file v.mp4] [--batch_size 4] [--threshold 0.5] [--cpu_threads 4]
        [--target_size 480 640] [--keep_ratio]   (a dynamic-size export: tools/export_model.py --image_shape 3 -1 -1)
        [--max_pixels 50000000]   (larger images are refused from their header, before decoding; 0: no limit)

Needs onnxruntime, numpy, OpenCV and PyYAML (not Paddle). Preprocessing, the baked-size check, drawing and
results.json (with Mask-RT-DETR's masks as COCO RLE) are deploy/python's, so both engines give the same output
for the same folder.
"""
import argparse
import os
import sys

import onnxruntime as ort

# the shared deploy modules (preprocess, post-process, command line) live in deploy/python
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'python'))
from detector import Detector, add_io_args, run  # noqa: E402

__all__ = ['OrtDetector']


class OrtDetector(Detector):
    """`Detector` on an onnxruntime session.

    Args:
        model_dir (str): exported folder holding infer_cfg.yml and the ONNX file.
        model_file (str|None): the ONNX file (default: model_dir/model.onnx).
        device (str): 'CPU', or 'GPU' (CUDAExecutionProvider; ValueError if this onnxruntime lacks it).
        cpu_threads (int): intra-op threads.
        target_size, keep_ratio: run-time size of a dynamic-size export (see `Detector`).
    """

    def __init__(self, model_dir, model_file=None, device='CPU', cpu_threads=1, target_size=None, keep_ratio=False):
        super().__init__(model_dir, target_size, keep_ratio)
        model_file = model_file or os.path.join(model_dir, 'model.onnx')
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f'{model_file} not found: convert it with '
                                    f'tools/export_onnx.py --model_dir {model_dir}')
        providers = ['CPUExecutionProvider']
        if device.upper() == 'GPU':
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise ValueError('--device GPU needs onnxruntime-gpu (CUDAExecutionProvider is not available)')
            providers.insert(0, 'CUDAExecutionProvider')
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.log_severity_level = 3  # files converted before onnx_clean (and INT8 ones) warn per unused constant
        self.session = ort.InferenceSession(model_file, options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, feeds):
        return self.session.run(None, feeds)


def main(argv=None):
    parser = add_io_args(argparse.ArgumentParser(description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument('--model_file', default=None, help='default: <model_dir>/model.onnx')
    args = parser.parse_args(argv)
    return run(OrtDetector(args.model_dir, args.model_file, args.device, args.cpu_threads, args.target_size,
                           args.keep_ratio), args)


if __name__ == '__main__':
    main()
