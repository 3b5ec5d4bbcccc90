"""Engine-independent part of the deploy scripts: the Detector contract and the image / video command line.

`deploy/python/infer.py` (Paddle Inference) and `deploy/onnxruntime/infer.py` subclass `Detector` with an
engine; everything else (preprocessing from infer_cfg.yml, the run-time size of a dynamic-size export, the
baked-size check, the post-process of raw exports, drawing and JSON) is shared, so both engines give the same
results for the same folder.
"""
import glob
import itertools
import json
import os
import sys
import time

import cv2

from image_io import DEFAULT_MAX_PIXELS, ImageError, parse_max_pixels, read_image
from postprocess import detections_to_json, draw_detections, split_detections, topk_postprocess
from preprocess import Preprocessor, check_input_size, load_infer_cfg, run_size_ops

__all__ = ['Detector', 'add_io_args', 'run']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def _baked_image_shape(infer_cfg):
    """[3, H, W] the export baked: `image_shape`, else (ppdet's own exports) a keep_ratio=False Resize."""
    if infer_cfg.get('image_shape'):
        return infer_cfg['image_shape']
    for op in infer_cfg.get('Preprocess', []):
        if op['type'] == 'Resize' and not op.get('keep_ratio', True):
            return [3] + list(op['target_size'])
    return None


class Detector:
    """An exported RT-DETR folder behind one `predict` call; subclasses supply the engine.

    Args:
        model_dir (str): a folder written by tools/export_model.py (infer_cfg.yml + model files).
        target_size (list[int]|None): [H, W] to run a dynamic-size export at (default: its infer_cfg size).
        keep_ratio (bool): a dynamic-size export resizes each image keeping its aspect ratio within
            target_size, each side rounded to a multiple of the model's stride (one image per batch unless the
            images share a shape). Either option on a fixed-size export is a ValueError naming its size.

    Subclasses set `self.input_names` (the model's inputs, a subset of image / im_shape / scale_factor) and
    implement `_run(feeds: dict name -> ndarray) -> list of ndarray` (the model outputs in order).
    predict(inputs dict of `image` [b, 3, H, W], `im_shape` [b, 2], `scale_factor` [b, 2]) ->
    (bbox [N, 6] (class, score, x1, y1, x2, y2) in original pixels, bbox_num int32 [b]), plus a Mask-RT-DETR
    export's (infer_cfg `mask: true`) mask int32 [N, H, W] of {0, 1} (the batch's largest original size, image
    i's masks in its top-left part); a raw export (exclude_post_process) is post-processed in numpy. An input
    whose H x W differs from the baked size is a ValueError naming both sizes.
    predict_images(list of RGB uint8 images) -> list of [K_i, 6], one per image; predict_instances(images) ->
    list of (dets [K_i, 6], masks uint8 [K_i, h_i, w_i] at the image's size, or None without masks).
    """

    def __init__(self, model_dir, target_size=None, keep_ratio=False):
        self.model_dir = model_dir
        self.infer_cfg = load_infer_cfg(model_dir)
        self.preprocess = Preprocessor(run_size_ops(self.infer_cfg['Preprocess'], self.infer_cfg, target_size,
                                                    keep_ratio))
        self.labels = [str(name) for name in self.infer_cfg.get('label_list', [])]
        self.image_shape = _baked_image_shape(self.infer_cfg)
        self.raw = bool(self.infer_cfg.get('exclude_post_process', False))
        self.with_mask = bool(self.infer_cfg.get('mask', False))
        self.input_names = ['image'] if self.raw else ['image', 'im_shape', 'scale_factor']

    def _run(self, feeds):
        raise NotImplementedError

    def predict(self, inputs):
        check_input_size(inputs['image'], self.image_shape)
        outputs = self._run({name: inputs[name] for name in self.input_names})
        if self.raw:
            return topk_postprocess(outputs[0], outputs[1], inputs['im_shape'], inputs['scale_factor'],
                                    self.infer_cfg['num_top_queries'], self.infer_cfg.get('use_focal_loss', True))
        return tuple(outputs[:3 if self.with_mask else 2])

    def predict_images(self, images):
        return [dets for dets, _ in self.predict_instances(images)]

    def predict_instances(self, images):
        outputs = self.predict(self.preprocess(images))
        dets = split_detections(outputs[0], outputs[1])
        if not self.with_mask:
            return [(d, None) for d in dets]
        masks = split_detections(outputs[2], outputs[1])
        # each image's masks fill the top-left part of the batch's [H, W]: crop to its own size
        return [(d, m[:, :im.shape[0], :im.shape[1]].astype('uint8')) for d, m, im in zip(dets, masks, images)]


def add_io_args(parser):
    """The command-line options every deploy script shares."""
    parser.add_argument('--model_dir', required=True, help='exported folder (tools/export_model.py)')
    parser.add_argument('--image_file', default=None, help='one image')
    parser.add_argument('--image_dir', default=None, help='a directory of images')
    parser.add_argument('--video_file', default=None, help='a video; the drawn video is written to output_dir')
    parser.add_argument('--batch_size', type=int, default=1, help='images per run (any size: the batch is dynamic)')
    parser.add_argument('--threshold', type=float, default=None,
                        help="lowest score drawn and written (default: infer_cfg.yml's draw_threshold)")
    parser.add_argument('--output_dir', default='output', help='drawn images / video and results.json')
    parser.add_argument('--device', default='CPU', choices=['CPU', 'GPU', 'cpu', 'gpu'])
    parser.add_argument('--cpu_threads', type=int, default=1, help='CPU math threads')
    parser.add_argument('--target_size', nargs=2, type=int, default=None, metavar=('H', 'W'),
                        help='input size of a dynamic-size export (--image_shape 3 -1 -1 at export)')
    parser.add_argument('--keep_ratio', action='store_true',
                        help='dynamic-size export: keep each image\'s aspect ratio within --target_size (or the '
                             'export\'s size), sides rounded to a multiple of the stride')
    parser.add_argument('--max_pixels', type=parse_max_pixels, default=DEFAULT_MAX_PIXELS,
                        help='largest image (width * height, from its header, checked before decoding) that is '
                             'read; larger ones are refused (skipped in --image_dir). 0: no limit. '
                             f'Default {DEFAULT_MAX_PIXELS} ({DEFAULT_MAX_PIXELS / 1e6:g} megapixels)')
    return parser


def _image_paths(image_dir):
    paths = sorted(p for p in glob.glob(os.path.join(image_dir, '*'))
                   if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f'no {"/".join(IMAGE_EXTENSIONS)} image in {image_dir}')
    return paths


def _readable_images(paths, max_pixels, skipped):
    """(path, RGB image) of each file of `paths` that reads; an unreadable or oversize one is reported on
    stderr and appended to `skipped`, so that one bad file does not stop a folder."""
    for path in paths:
        try:
            yield path, read_image(path, max_pixels)
        except ImageError as e:
            print(f'WARNING: skipped {e}', file=sys.stderr)
            skipped.append(path)


def _print_instances(path, dets, masks, threshold):
    """One line per image of a mask export: the kept instances with their mask areas in pixels."""
    if masks is None:
        return
    keep = dets[:, 1] >= threshold
    areas = ', '.join(f'class {int(d[0])} {d[1]:.2f} {int(m.sum())} px' for d, m in zip(dets[keep], masks[keep]))
    print(f'{path}: {int(keep.sum())} instance(s) >= {threshold}' + (f': {areas}' if areas else ''))


def _run_images(detector, args, threshold, results):
    """Detect on --image_file (a bad file raises ImageError) or --image_dir (bad files skipped); return the
    skipped paths."""
    skipped = []
    if args.image_file:
        read = iter([(args.image_file, read_image(args.image_file, args.max_pixels))])
    else:
        read = _readable_images(_image_paths(args.image_dir), args.max_pixels, skipped)
    # full batches of readable images: a skipped file does not shorten its batch
    while batch := list(itertools.islice(read, args.batch_size)):
        paths, images = zip(*batch)
        start = time.perf_counter()
        instances = detector.predict_instances(images)
        print(f'{len(paths)} image(s) in {1000 * (time.perf_counter() - start):.1f} ms')
        for path, image, (det, masks) in zip(paths, images, instances):
            cv2.imwrite(os.path.join(args.output_dir, os.path.basename(path)),
                        draw_detections(image, det, detector.labels, threshold, masks))
            results.append({'image': path,
                            'detections': detections_to_json(det, detector.labels, threshold, masks)})
            _print_instances(path, det, masks, threshold)
    return skipped


def _run_video(detector, args, threshold, results):
    capture = cv2.VideoCapture(args.video_file)
    if not capture.isOpened():
        raise ValueError(f'cannot open video {args.video_file}')
    fps = capture.get(cv2.CAP_PROP_FPS) or 25
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    name = os.path.splitext(os.path.basename(args.video_file))[0] + '.mp4'
    writer = cv2.VideoWriter(os.path.join(args.output_dir, name), cv2.VideoWriter_fourcc(*'mp4v'), fps, size)
    frames, index, ok = [], 0, True
    while ok:
        ok, frame = capture.read()
        if ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if frames and (len(frames) == args.batch_size or not ok):
            for frame_rgb, (det, masks) in zip(frames, detector.predict_instances(frames)):
                writer.write(draw_detections(frame_rgb, det, detector.labels, threshold, masks))
                results.append({'frame': index,
                                'detections': detections_to_json(det, detector.labels, threshold, masks)})
                index += 1
            frames = []
    capture.release()
    writer.release()


def run(detector, args):
    """Run `detector` on --image_file / --image_dir / --video_file; write drawings and results.json.

    Images are read with `image_io.read_image` (header checked against --max_pixels before decoding): a bad
    --image_file is an ImageError naming it; bad files of --image_dir are skipped with a warning each, the
    others' results are written, and the last line counts the skipped ones.
    """
    if not (args.image_file or args.image_dir or args.video_file):
        raise ValueError('give one of --image_file, --image_dir or --video_file')
    os.makedirs(args.output_dir, exist_ok=True)
    threshold = args.threshold if args.threshold is not None else detector.infer_cfg.get('draw_threshold', 0.5)
    results, skipped = [], []
    if args.video_file:
        _run_video(detector, args, threshold, results)
    else:
        skipped = _run_images(detector, args, threshold, results)
    path = os.path.join(args.output_dir, 'results.json')
    with open(path, 'w') as f:
        json.dump(results, f, indent=1)
    note = f'; {len(skipped)} image(s) skipped (unreadable or too large, see the warnings above)' if skipped else ''
    print(f'results of {len(results)} {"frame" if args.video_file else "image"}(s) written to {path}{note}')
    return results
