"""Detect objects in images with ppdet's Trainer, as PaddleDetection's tools/infer.py does.

    python tools/infer.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml -o weights=output/best_model
        --infer_img demo.jpg | --infer_dir images/ [--draw_threshold 0.5 --output_dir output]
        [--save_results]

Writes one picture with the boxes (and a Mask-RT-DETR's masks) drawn per image to --output_dir and, with
--save_results, the detections of all images to --output_dir/bbox.json (COCO result format) and the masks to
--output_dir/mask.json (COCO results with RLE segmentations; ppdet's file name).
"""
import glob
import os

import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet.utils.logger import setup_logger

from ppdet_rtdetr.cli import ToolArgsParser, load_tool_config, str2bool
from ppdet_rtdetr.engine import RTDETRTrainer, safe_load

logger = setup_logger('infer')

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


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
    safe_load.add_flag(parser)
    args = parser.parse_args(argv)
    if args.infer_img is None and args.infer_dir is None:
        parser.error('one of --infer_img or --infer_dir is required')
    return args


def find_images(infer_img=None, infer_dir=None):
    """The image(s) to run on: `infer_img` if given, else the images directly in `infer_dir`.

    Returns:
        list[str]: sorted paths, so that results come in a stable order.
    """
    if infer_img:
        if not os.path.isfile(infer_img):
            raise FileNotFoundError('--infer_img {} is not a file'.format(infer_img))
        return [infer_img]
    if not os.path.isdir(infer_dir):
        raise NotADirectoryError('--infer_dir {} is not a directory'.format(infer_dir))
    images = sorted(path for path in glob.glob(os.path.join(infer_dir, '*'))
                    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError('no {} image in {}'.format('/'.join(IMAGE_EXTENSIONS), infer_dir))
    logger.info('Found {} images in {}.'.format(len(images), infer_dir))
    return images


def main(argv=None):
    args = parse_args(argv)
    images = find_images(args.infer_img, args.infer_dir)  # before the slow model build
    cfg, _ = load_tool_config(args, mode='test')

    trainer = RTDETRTrainer(cfg, mode='test')
    trainer.load_weights(cfg.weights)
    trainer.predict(images, draw_threshold=args.draw_threshold, output_dir=args.output_dir,
                    save_results=args.save_results, visualize=args.visualize)


if __name__ == '__main__':
    main()
