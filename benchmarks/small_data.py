"""AP50 against training time on the demo data, with and without each small-data option, same seed.

    OMP_NUM_THREADS=1 python benchmarks/small_data.py --out benchmarks/small_data.json [--variants baseline mal]

Every variant trains the demo model (configs/demo/rtdetr_r18vd_shapes.yml) from scratch on the same generated
set (`--kind shapes`, or `polygons`: other classes in random colours), with the same seed and the same number
of iterations, evaluating as the demo config says; only the option under test differs. Runs go two at a time (`--parallel`) so that each pair shares the machine alike:
compare iterations first, seconds only within one pair. Writes the curves and the load average as JSON.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_runs import first_reaching, load_average, run_all, size_overrides  # noqa: E402

DEMO = 'configs/demo/rtdetr_r18vd_shapes.yml'
# name -> (config, overrides, what it tests)
VARIANTS = {
    'baseline': (DEMO, [], 'the demo config: varifocal loss, one image per sample'),
    'mal': (DEMO, ['RTDETRCriterion.class_loss=mal'], "DEIM's Matchability-Aware Loss instead of the varifocal loss"),
    'mosaic': ('configs/small_data/rtdetr_r18vd_small_data.yml', [],
               'dense one-to-one matching: 2x2 mosaics (prob 0.5) until the stop epoch'),
    'mal_mosaic': ('configs/small_data/rtdetr_r18vd_small_data.yml', ['RTDETRCriterion.class_loss=mal'],
                   'both'),
    'topk': (DEMO, ['RTDETRDeformableTransformer.query_distinct_iou=0'],
             "the official query selection (top-k of the scores) instead of the demo's distinct queries"),
    'selection_only': (DEMO, ['RTDETRDeformableTransformer.decoder_distinct_iou=0'],
                       'distinct queries at selection only: no query dropped in the decoder'),
    'decoder_0.7': (DEMO, ['RTDETRDeformableTransformer.decoder_distinct_iou=0.7'],
                    'decoder queries dropped at IoU 0.7 instead of 0.8'),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='JSON to write')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--kind', default='shapes', choices=['shapes', 'polygons'], help='generated data set')
    parser.add_argument('--image_size', type=int, default=160, help='nominal side of the generated images')
    parser.add_argument('--num_train', type=int, default=240)
    parser.add_argument('--num_val', type=int, default=60)
    parser.add_argument('--epochs', type=int, default=4,
                        help="epochs run, of the demo config's cosine schedule (the schedule is not shortened)")
    parser.add_argument('--stop_epoch', type=int, default=2, help='mosaic off from this epoch (0-based)')
    parser.add_argument('--size', type=int, default=160, help='training and evaluation input size (demo: 160)')
    parser.add_argument('--limit_s', type=int, default=480, help='wall-clock limit of each run')
    parser.add_argument('--parallel', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0, help='training seed of every run')
    parser.add_argument('--work_dir', default=None, help='data and run folders (default: a temporary one)')
    parser.add_argument('--ap50', type=float, default=0.5, help='report when each run first reaches this AP50')
    args = parser.parse_args(argv)

    from ppdet_rtdetr.data.synthetic import make_dataset
    work = args.work_dir or tempfile.mkdtemp(prefix='small_data_')
    data = os.path.join(work, args.kind)
    splits = make_dataset(data, args.num_train, args.num_val, args.image_size, kind=args.kind)
    with open(splits['train']['anno_path']) as f:
        num_classes = len(json.load(f)['categories'])
    common = ['TrainDataset.dataset_dir=' + data, 'EvalDataset.dataset_dir=' + data, f'epoch={args.epochs}',
              f'num_classes={num_classes}']
    stop = [f'RTDETRTrainReader.stop_epoch={args.stop_epoch}']  # only the configs with a stop-epoch reader
    specs = []
    for name in args.variants:
        config, overrides, _ = VARIANTS[name]
        size = size_overrides(args.size, 'TrainReader' if config == DEMO else 'RTDETRTrainReader')
        specs.append((name, config, common + size + (stop if config != DEMO else []) + overrides, []))
    load_before = load_average()
    runs = run_all(specs, os.path.join(work, f'runs_seed{args.seed}'), args.limit_s, args.parallel, args.seed)
    for name, curve in runs.items():
        curve['what'] = VARIANTS[name][2]
        curve[f'first_ap50_{args.ap50}'] = first_reaching(curve, args.ap50)
    result = {
        'protocol': {'data': f'{args.kind} ({args.image_size} px), {args.num_train} train / {args.num_val} val '
                             'images (seed 0)',
                     'config': DEMO, 'seed': args.seed, 'size': args.size, 'epochs': args.epochs,
                     'stop_epoch': args.stop_epoch,
                     'parallel': args.parallel, 'limit_s': args.limit_s,
                     'threads': os.environ.get('OMP_NUM_THREADS'),
                     'load_average_before_after': [load_before, load_average()]},
        'runs': runs,
    }
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    for name, curve in runs.items():
        last = curve['evaluations'][-1] if curve['evaluations'] else {}
        print(f"{name:12s} AP50 {last.get('ap50')}  AP {last.get('ap')}  after {last.get('iteration')} it, "
              f"{last.get('wall_s')} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
