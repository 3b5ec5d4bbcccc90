"""Run an exported RT-DETR folder's model.onnx with FastDeploy (`fastdeploy-python`, Python <= 3.10).

    python deploy/fastdeploy/infer.py --model_dir output_inference/rtdetr_r50vd_6x_coco --image_file demo.jpg
        [--cpu_threads 4] [--threshold 0.5] [--output_dir output] [--max_pixels 50000000]

FastDeploy 1.0.7 has no RT-DETR class; its generic `PaddleDetectionModel` reads infer_cfg.yml (Preprocess,
arch, label_list) and the (bbox, bbox_num) outputs of our export. Its Paddle backend cannot read Paddle 3's
model.json, so this runs the ONNX file on the onnxruntime backend. Prints the detections as JSON lines.
The image is read with deploy/python's `read_image` (its header checked against --max_pixels before decoding).
"""
import argparse
import json
import os
import sys

import cv2
import fastdeploy as fd

# deploy/python's image reader (numpy + OpenCV only), as deploy/onnxruntime shares its modules
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'python'))
from image_io import DEFAULT_MAX_PIXELS, parse_max_pixels, read_image  # noqa: E402


def build_model(model_dir, cpu_threads=1):
    """FastDeploy's PaddleDetectionModel on model_dir/model.onnx + infer_cfg.yml, onnxruntime on CPU."""
    option = fd.RuntimeOption()
    option.use_cpu()
    option.use_ort_backend()
    option.set_cpu_thread_num(cpu_threads)
    return fd.vision.detection.PaddleDetectionModel(
        os.path.join(model_dir, 'model.onnx'), '', os.path.join(model_dir, 'infer_cfg.yml'),
        runtime_option=option, model_format=fd.ModelFormat.ONNX)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model_dir', required=True, help='exported folder with model.onnx and infer_cfg.yml')
    parser.add_argument('--image_file', required=True)
    parser.add_argument('--threshold', type=float, default=0.5, help='lowest score printed and drawn')
    parser.add_argument('--cpu_threads', type=int, default=1)
    parser.add_argument('--output_dir', default='output')
    parser.add_argument('--max_pixels', type=parse_max_pixels, default=DEFAULT_MAX_PIXELS,
                        help='largest image (width * height, from its header) that is decoded; 0: no limit')
    args = parser.parse_args(argv)

    # read first: a bad or oversize image is refused (ImageError naming it) before the model is built;
    # FastDeploy takes BGR HWC and does the RGB conversion itself
    image = read_image(args.image_file, args.max_pixels, to_rgb=False)
    model = build_model(args.model_dir, args.cpu_threads)
    result = model.predict(image)
    for box, score, label in zip(result.boxes, result.scores, result.label_ids):
        if score >= args.threshold:
            print(json.dumps({'class_id': int(label), 'score': float(score), 'bbox': [float(v) for v in box]}))
    os.makedirs(args.output_dir, exist_ok=True)
    cv2.imwrite(os.path.join(args.output_dir, os.path.basename(args.image_file)),
                fd.vision.vis_detection(image, result, score_threshold=args.threshold))


if __name__ == '__main__':
    main()
