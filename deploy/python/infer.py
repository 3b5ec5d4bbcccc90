"""Run an exported RT-DETR folder with Paddle Inference (Paddle 3's model.json or a legacy model.pdmodel).

    python deploy/python/infer.py --model_dir output_inference/rtdetr_r50vd_6x_coco --image_file demo.jpg
        [--image_dir dir | --video_file v.mp4] [--batch_size 4] [--threshold 0.5] [--output_dir output]
        [--device CPU --cpu_threads 4 --enable_mkldnn | --device GPU --run_mode paddle|trt_fp32|trt_fp16]
        [--target_size 480 640] [--keep_ratio]   (a dynamic-size export: tools/export_model.py --image_shape 3 -1 -1)
        [--max_pixels 50000000]   (larger images are refused from their header, before decoding; 0: no limit)

Needs only paddlepaddle, numpy, OpenCV and PyYAML (not ppdet). An export made with export.cpu_fused_attention
runs on CPU only; its folder's operator library is registered here. Writes the drawn images (or video) and
results.json (per image: class_id, label, score, bbox [x1, y1, x2, y2] in original pixels, and for a Mask-RT-DETR
export its mask as COCO RLE in `segmentation`, drawn as an overlay too) to --output_dir.
"""
import argparse

import paddle
from paddle import inference

from detector import Detector, add_io_args, run
from preprocess import find_model_files, register_custom_ops

__all__ = ['PaddleDetector']

_TRT_PRECISION = {'trt_fp32': inference.PrecisionType.Float32, 'trt_fp16': inference.PrecisionType.Half}


class PaddleDetector(Detector):
    """`Detector` on a Paddle Inference predictor.

    Args:
        model_dir (str): exported folder.
        device (str): 'CPU' or 'GPU' (ValueError if this Paddle build has no CUDA).
        run_mode (str): 'paddle', or on GPU 'trt_fp32' / 'trt_fp16' (Paddle-TensorRT with a dynamic batch of
            1..trt_max_batch and the baked H x W, or a dynamic-size export's infer_cfg `trt_shape_range`).
        cpu_threads (int): math threads on CPU. enable_mkldnn (bool): oneDNN kernels on CPU.
        trt_max_batch (int): largest batch TensorRT is built for.
        target_size, keep_ratio: run-time size of a dynamic-size export (see `Detector`).
    """

    def __init__(self, model_dir, device='CPU', run_mode='paddle', cpu_threads=1, enable_mkldnn=False,
                 trt_max_batch=1, target_size=None, keep_ratio=False):
        super().__init__(model_dir, target_size, keep_ratio)
        device = device.upper()
        if run_mode not in ('paddle',) + tuple(_TRT_PRECISION):
            raise ValueError(f"run_mode must be paddle, trt_fp32 or trt_fp16, got '{run_mode}'")
        if device == 'GPU' and not paddle.is_compiled_with_cuda():
            raise ValueError('--device GPU needs a CUDA build of Paddle (paddlepaddle-gpu); this one is CPU-only')
        if run_mode != 'paddle' and device != 'GPU':
            raise ValueError(f'--run_mode {run_mode} runs Paddle-TensorRT, which needs --device GPU')
        register_custom_ops(model_dir, device)
        config = inference.Config(*find_model_files(model_dir))
        if device == 'GPU':
            config.enable_use_gpu(200, 0)
            if run_mode != 'paddle':
                self._enable_trt(config, run_mode, trt_max_batch)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(cpu_threads)
            if enable_mkldnn:
                config.enable_mkldnn()
            else:
                config.disable_mkldnn()
        config.disable_glog_info()
        # no enable_memory_optim() (ppdet's deploy calls it): on Paddle 3.3.1 PIR programs it fails in
        # create_predictor with "Not find predictor_id 0 and pass_name memory_optimize_pass"
        self.predictor = inference.create_predictor(config)
        self.input_names = self.predictor.get_input_names()

    def _enable_trt(self, config, run_mode, max_batch):
        config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=max_batch,
                                      min_subgraph_size=self.infer_cfg.get('min_subgraph_size', 3),
                                      precision_mode=_TRT_PRECISION[run_mode], use_static=False,
                                      use_calib_mode=False)
        config.set_trt_dynamic_shape_info(*self.trt_shapes(max_batch))

    def trt_shapes(self, max_batch):
        """(min, max, opt) input shapes of the TensorRT engine, each {input name: shape}: batch 1 .. max_batch
        (opt 1); H x W the baked size, or a dynamic-size export's `trt_shape_range` {min, opt, max: [H, W]}."""
        _, h, w = self.image_shape
        hw = self.infer_cfg.get('trt_shape_range') or {'min': [h, w], 'opt': [h, w], 'max': [h, w]}
        if min(hw['min']) <= 0:
            raise ValueError(f'{self.model_dir}/infer_cfg.yml: a dynamic-size export needs trt_shape_range '
                             f'{{min, opt, max: [H, W]}} for TensorRT, got {hw}')
        shapes = {'min': (1, hw['min']), 'opt': (1, hw['opt']), 'max': (max_batch, hw['max'])}
        return tuple({name: [b, 3] + list(size) if name == 'image' else [b, 2] for name in self.input_names}
                     for b, size in (shapes[k] for k in ('min', 'max', 'opt')))

    def _run(self, feeds):
        for name, value in feeds.items():
            self.predictor.get_input_handle(name).copy_from_cpu(value)
        self.predictor.run()
        return [self.predictor.get_output_handle(name).copy_to_cpu()
                for name in self.predictor.get_output_names()]


def main(argv=None):
    parser = add_io_args(argparse.ArgumentParser(description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument('--run_mode', default='paddle', choices=['paddle', 'trt_fp32', 'trt_fp16'])
    parser.add_argument('--enable_mkldnn', action='store_true', help='oneDNN kernels on CPU')
    args = parser.parse_args(argv)
    detector = PaddleDetector(args.model_dir, args.device, args.run_mode, args.cpu_threads, args.enable_mkldnn,
                              trt_max_batch=args.batch_size, target_size=args.target_size, keep_ratio=args.keep_ratio)
    return run(detector, args)


if __name__ == '__main__':
    main()
