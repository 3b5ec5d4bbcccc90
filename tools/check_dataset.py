"""Check a COCO-format dataset before training, so bad entries show up now and not at iteration 5,000.

    python tools/check_dataset.py --ann annotations/train.json --image_dir images/train [--num_classes 80]
    python tools/check_dataset.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml [-o TrainDataset.dataset_dir=D ...]

Prints one report per dataset (with -c: TrainDataset and EvalDataset) and exits 1 when any has errors,
0 otherwise. Warnings name entries that training would skip or repair. Instance segmentation sets (any
non-empty `segmentation`) get their masks checked too; `--masks off` checks the boxes only, `--masks on`
also requires a mask on every non-crowd annotation of a set without any.
"""
import os
import sys

import ppdet_rtdetr  # noqa: F401  (registers modules, so configs naming them load)
from ppdet_rtdetr.cli import ToolArgsParser, apply_overrides
from ppdet_rtdetr.config import load_config
from ppdet_rtdetr.data.check import DatasetError, check_coco


def _parse(argv):
    parser = ToolArgsParser(__doc__, require_config=False)  # -c: checks the config's TrainDataset and EvalDataset
    parser.add_argument('--ann', help='COCO annotation JSON')
    parser.add_argument('--image_dir', help='directory that images[].file_name is relative to')
    parser.add_argument('--num_classes', type=int, help='expected number of categories (overrides -c)')
    parser.add_argument('--no_clip', action='store_true',
                        help='drop boxes outside the image instead of clipping them')
    parser.add_argument('--masks', choices=['auto', 'on', 'off'], default='auto',
                        help='check `segmentation` (polygons / RLE): auto when any annotation has one')
    args = parser.parse_args(argv)
    if not args.config and not (args.ann and args.image_dir):
        parser.error('give -c CONFIG, or --ann and --image_dir')
    return args


def _jobs_from_config(path, overrides, num_classes):
    """(name, ann_file, image_dir, num_classes, skip_empty) for each COCO dataset of a ppdet config."""
    cfg = load_config(path)
    apply_overrides(overrides)
    num_classes = cfg.get('num_classes') if num_classes is None else num_classes
    jobs = []
    for name in ('TrainDataset', 'EvalDataset'):
        dataset = cfg.get(name)
        if dataset is None:
            continue
        # `!COCODataSet` entries load as dataset objects, untagged ones as plain dicts.
        get = dataset.get if isinstance(dataset, dict) else lambda key: getattr(dataset, key, None)
        root = get('dataset_dir') or ''
        # COCODataSet keeps empty images only with allow_empty, so report them the way it will treat them.
        jobs.append((name, os.path.join(root, get('anno_path') or ''),
                     os.path.join(root, get('image_dir') or ''), num_classes, not get('allow_empty')))
    return jobs


def main(argv=None):
    args = _parse(argv)
    if args.config:
        jobs = _jobs_from_config(args.config, args.opt, args.num_classes)
    else:
        jobs = [('Dataset', args.ann, args.image_dir, args.num_classes, False)]
    status = 0
    for name, ann_file, image_dir, num_classes, skip_empty in jobs:
        print(f'{name}:')
        try:
            print(check_coco(ann_file, image_dir, num_classes=num_classes, clip_boxes=not args.no_clip,
                             skip_empty=skip_empty, masks={'on': True, 'off': False}.get(args.masks, 'auto')).format())
        except DatasetError as error:
            print(error)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
