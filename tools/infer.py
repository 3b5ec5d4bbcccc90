"""Detect objects in images with ppdet's Trainer, as PaddleDetection's tools/infer.py does.

    python tools/infer.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml -o weights=output/best_model
        --infer_img demo.jpg | --infer_dir images/ [--draw_threshold 0.5 --output_dir output]
        [--save_results] [--max_pixels 50000000]

Writes one picture with the boxes (and a Mask-RT-DETR's masks) drawn per image to --output_dir and, with
--save_results, the detections of all images to --output_dir/bbox.json (COCO result format) and the masks to
--output_dir/mask.json (COCO results with RLE segmentations; ppdet's file name). Every image is read once before
the model is built, with the deploy scripts' reader (deploy/python/image_io.py: the header's size checked
against --max_pixels before decoding): a bad --infer_img stops with an error naming it, bad files of
--infer_dir are skipped with a warning each.
"""
import glob
import importlib.util
import os

import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet.utils.logger import setup_logger

from ppdet_rtdetr.cli import ToolArgsParser, load_tool_config, str2bool
from ppdet_rtdetr.engine import RTDETRTrainer, safe_load

logger = setup_logger('infer')

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def _load_image_io():
    # one image reader for the tools and the deploy scripts; it lives with the deploy scripts, which run
    # without this package, and is loaded by path rather than by putting deploy/python on sys.path
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'deploy', 'python', 'image_io.py')
    spec = importlib.util.spec_from_file_location('rtdetr_deploy_image_io', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_io = _load_image_io()


def parse_args(argv=None):
    parser = ToolArgsParser(__doc__)
    parser.add_argument('--infer_img', default=None, help='one image (wins over --infer_dir)')
    parser.add_argument('--infer_dir', default=None, help='a directory of images')
    parser.add_argument('--output_dir', default='output', help='where drawn images are written')
    parser.add_argument('--draw_threshold', type=float, default=0.5,
                        help='lowest score that is drawn')
    parser.add_argument('--save_results', type=str2bool, nargs='?', const=True, default=False,
                        help='also write the detections to output_dir/bbox.json')
    parser.add_argument('--visualize', type=str2bool, default=True,
                        help='draw the boxes (`--visualize False` with --save_results only)')
    parser.add_argument('--slim_config', default=None, help='PaddleSlim config to apply')
    parser.add_argument('--use_vdl', type=str2bool, nargs='?', const=True, default=False,
                        help='log drawn images to VisualDL')
    parser.add_argument('--vdl_log_dir', default='vdl_log_dir/image', help='VisualDL log dir')
    parser.add_argument('--max_pixels', type=image_io.parse_max_pixels, default=image_io.DEFAULT_MAX_PIXELS,
                        help='largest image (width * height, from its header, checked before decoding) that is '
                             'read; larger ones are refused (skipped in --infer_dir). 0: no limit')
    safe_load.add_flag(parser)
    args = parser.parse_args(argv)
    if args.infer_img is None and args.infer_dir is None:
        parser.error('one of --infer_img or --infer_dir is required')
    return args


def find_images(infer_img=None, infer_dir=None, max_pixels=image_io.DEFAULT_MAX_PIXELS):
    """The image(s) to run on: `infer_img` if given, else the readable images directly in `infer_dir`.

    Each file is decoded once here (ppdet's reader decodes it again): ppdet's Decode would decode an image of
    any declared size, and one corrupt file would stop the whole run in the data loader.

    Returns:
        (list[str], list[str]): the sorted paths to run on (a stable order of results), the skipped ones.
    Raises:
        ImageError: `infer_img` is unreadable, not an image or above `max_pixels` (the message names it).
        FileNotFoundError: no image (or no readable one) in `infer_dir`.
    """
    if infer_img:
        if not os.path.isfile(infer_img):
            raise FileNotFoundError('--infer_img {} is not a file'.format(infer_img))
        image_io.read_image(infer_img, max_pixels)
        return [infer_img], []
    if not os.path.isdir(infer_dir):
        raise NotADirectoryError('--infer_dir {} is not a directory'.format(infer_dir))
    found = sorted(path for path in glob.glob(os.path.join(infer_dir, '*'))
                   if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS)
    if not found:
        raise FileNotFoundError('no {} image in {}'.format('/'.join(IMAGE_EXTENSIONS), infer_dir))
    images, skipped = [], []
    for path in found:
        try:
            image_io.read_image(path, max_pixels)
            images.append(path)
        except image_io.ImageError as e:
            logger.warning('skipped {}'.format(e))
            skipped.append(path)
    if not images:
        raise FileNotFoundError('no readable image in {}: all {} skipped (see the warnings above)'.format(
            infer_dir, len(skipped)))
    logger.info('Found {} images in {}{}.'.format(len(images), infer_dir, _skipped_note(skipped)))
    return images, skipped


def _skipped_note(skipped):
    return ', {} skipped (unreadable or too large: {})'.format(len(skipped), ', '.join(
        os.path.basename(p) for p in skipped)) if skipped else ''


def main(argv=None):
    args = parse_args(argv)
    images, skipped = find_images(args.infer_img, args.infer_dir, args.max_pixels)  # before the slow model build
    cfg, _ = load_tool_config(args, mode='test')

    trainer = RTDETRTrainer(cfg, mode='test')
    trainer.load_weights(cfg.weights)
    trainer.predict(images, draw_threshold=args.draw_threshold, output_dir=args.output_dir,
                    save_results=args.save_results, visualize=args.visualize)
    logger.info('Inferred {} images{}.'.format(len(images), _skipped_note(skipped)))


if __name__ == '__main__':
    main()
