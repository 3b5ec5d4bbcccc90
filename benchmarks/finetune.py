"""Fine-tuning, measured: how much sooner a model pretrained on the shapes reaches a given AP50 on a set with
other classes (pentagon, star, diamond, bar in random colours) than the same model trained from scratch.

    OMP_NUM_THREADS=1 python benchmarks/finetune.py --pretrained RUN/rtdetr_r18vd_shapes/model_final.pdparams \
        --out benchmarks/finetune.json

This stands in for fine-tuning from COCO weights, which cannot be downloaded here. Both runs use the demo
config, the same seed, data and schedule; only `pretrain_weights` differs. They run side by side, so their
seconds are comparable; the JSON gives, per AP50 threshold, the first evaluation (iterations and seconds)
that reaches it in each run.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_runs import first_reaching, load_average, run_all, size_overrides  # noqa: E402

DEMO = 'configs/demo/rtdetr_r18vd_shapes.yml'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pretrained', required=True, help='weights (.pdparams) of a model trained on the shapes')
    parser.add_argument('--pretrained_note', default='', help='where the weights come from, stored in the JSON')
    parser.add_argument('--out', required=True, help='JSON to write')
    parser.add_argument('--num_train', type=int, default=240)
    parser.add_argument('--num_val', type=int, default=40)
    parser.add_argument('--size', type=int, default=160, help='training and evaluation input size (demo: 160)')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--limit_s', type=int, default=480, help='wall-clock limit of each run')
    parser.add_argument('--ap50', type=float, nargs='+', default=[0.1, 0.2, 0.3, 0.5, 0.7])
    parser.add_argument('--work_dir', default=None, help='data and run folders (default: a temporary one)')
    args = parser.parse_args(argv)
    if not os.path.isfile(args.pretrained):
        parser.error(f'--pretrained {args.pretrained}: no such file')

    from ppdet_rtdetr.data.synthetic import make_dataset
    work = args.work_dir or tempfile.mkdtemp(prefix='finetune_')
    data = os.path.join(work, 'polygons')
    make_dataset(data, args.num_train, args.num_val, kind='polygons')
    common = ['TrainDataset.dataset_dir=' + data, 'EvalDataset.dataset_dir=' + data, f'epoch={args.epochs}',
              *size_overrides(args.size)]
    specs = [('scratch', DEMO, common + ["pretrain_weights=''"], []),
             ('finetune', DEMO, common + ['pretrain_weights=' + os.path.abspath(args.pretrained)], [])]
    load_before = load_average()
    runs = run_all(specs, os.path.join(work, 'runs'), args.limit_s, parallel=2)
    reached = {}
    for ap50 in args.ap50:
        first = {name: first_reaching(curve, ap50) for name, curve in runs.items()}
        if first['scratch'] and first['finetune']:
            first['iterations_saved_fraction'] = round(
                1 - first['finetune']['iteration'] / first['scratch']['iteration'], 3)
        reached[str(ap50)] = first
    result = {
        'protocol': {'data': f'polygons (other classes, random colours), {args.num_train} train / '
                             f'{args.num_val} val images (seed 0)',
                     'config': DEMO, 'size': args.size, 'epochs': args.epochs, 'limit_s': args.limit_s,
                     'pretrained': args.pretrained, 'pretrained_note': args.pretrained_note,
                     'threads': os.environ.get('OMP_NUM_THREADS'),
                     'load_average_before_after': [load_before, load_average()]},
        'first_reaching_ap50': reached,
        'runs': runs,
    }
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(json.dumps(reached, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
