"""Write the synthetic COCO-format "shapes" dataset used by the demo and the smoke tests.

    python tools/make_demo_dataset.py --out dataset/shapes --num_train 200 --num_val 40

Re-running with the same parameters keeps the existing files; the parameters are recorded in each
annotation file's `info.params`.
"""
import argparse

from ppdet_rtdetr.data.synthetic import CATEGORIES, OTHER_CATEGORIES, make_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--num_train', type=int, default=200, help='number of train images')
    parser.add_argument('--num_val', type=int, default=40, help='number of val images')
    parser.add_argument('--size', type=int, default=160,
                        help='nominal image side; each image is 0.8-1.25x this, never square')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument('--kind', default='shapes', choices=['shapes', 'polygons'],
                        help="'shapes': the demo's 4 classes; 'polygons': 4 other classes in random colours "
                             "(a fine-tuning target, see benchmarks/finetune.py)")
    parser.add_argument('--instances', action='store_true',
                        help='objects may overlap, each with its exact visible mask as a COCO RLE segmentation '
                             '(the instance-segmentation demo)')
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error('--size must be at least 32 so that objects stay clearly visible')
    return args


def main(argv=None):
    args = parse_args(argv)
    splits = make_dataset(args.out, args.num_train, args.num_val, args.size, args.seed, args.kind, args.instances)
    for split, paths in splits.items():
        state = 'written' if paths['generated'] else 'up to date, kept'
        print('{}: {} ({}), images in {}'.format(split, paths['anno_path'], state,
                                                 paths['image_dir']))
    categories = CATEGORIES if args.kind == 'shapes' else OTHER_CATEGORIES
    names = ', '.join('{}={}'.format(c['id'], c['name']) for c in categories)
    print('categories: {} (num_classes: {})'.format(names, len(categories)))


if __name__ == '__main__':
    main()
