"""INT8 against float32 onnxruntime on one config at 640, batch 1, interleaved rounds, with both GEMM probes.

    python benchmarks/int8_speed.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --work_dir /tmp/r18 \
        [--weights hashinit] [--fp32_groups ...] [--rounds 3] [--runs 5] [--cpu_threads 2] --output benchmarks/x.json

1. exports the config at 640x640 (weights: `hashinit`, the name-hashed weights of tests/reference, or `random`
   with seed 0) and converts it to ONNX;
2. quantizes it with ppdet_rtdetr.quant, calibrated on the two real COCO images of the R18vd golden reference
   (tests/reference/rtdetr_r18vd_golden.npz, 640x640 as the eval reader resizes them), keeping `--fp32_groups`
   in float32 (default: the sensitivity sweep decides);
3. times float32 and each INT8 model of `--compare` alternately for `--rounds` rounds, each in a fresh worker process that also measures
   numpy's float32 GEMM and onnxruntime's int8 GEMM before and after, so the ratio compares like with like.
Steps 1-2 are skipped when work_dir already holds their output. The JSON has every round, the speed-up per
round, and how far the INT8 detections moved on the two images (ppdet_rtdetr.quant.detection_drift).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from harness.harness import emit_report, prepare, run_worker  # noqa: E402
from harness.probe import machine  # noqa: E402
from ppdet_rtdetr.quant import GROUPS, detection_drift, quantize_export  # noqa: E402
from ppdet_rtdetr.quant.calibration import FeedReader  # noqa: E402
from ppdet_rtdetr.quant.sensitivity import OrtRunner  # noqa: E402

GOLDEN = os.path.join(ROOT, 'tests', 'reference', 'rtdetr_r18vd_golden.npz')


def _golden_images():
    """The golden reference's images as model feeds (pixels / 255, as the COCO configs' NormalizeImage)."""
    golden = np.load(GOLDEN)
    images = (golden['image_u8'].astype('float32') * np.float32(1 / 255.)).transpose(0, 3, 1, 2)
    return FeedReader({'image': images[i:i + 1], 'im_shape': golden['im_shape'][i:i + 1].astype('float32'),
                       'scale_factor': golden['scale_factor'][i:i + 1].astype('float32')} for i in range(len(images)))


def _hashinit_weights(config, path):
    import paddle
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create
    from ppdet_rtdetr.config import load_config
    sys.path.insert(0, os.path.join(ROOT, 'tests', 'reference'))
    import hashinit
    model = create(load_config(config).architecture)
    hashinit.apply_paddle(model)
    paddle.save(model.state_dict(), path)
    return path


def build(config, work_dir, weights='hashinit', int8_name='int8', fp32_groups=None, tolerance=0.05, cpu_threads=2,
          quantize=True):
    """Export + quantize into work_dir (kept between runs); returns (model facts, fp32 dir, int8 dir)."""
    fp32_dir, int8_dir = os.path.join(work_dir, 'model'), os.path.join(work_dir, int8_name)
    facts_file = os.path.join(work_dir, 'facts.json')
    if not os.path.isfile(facts_file):
        os.makedirs(work_dir, exist_ok=True)
        opt = {}
        if weights == 'hashinit':
            opt['weights'] = _hashinit_weights(config, os.path.join(work_dir, 'hashinit.pdparams'))
        facts, fp32_dir, _ = prepare(config, opt, [3, 640, 640], work_dir)
        facts['weights'] = weights
        with open(facts_file, 'w') as f:
            json.dump(facts, f)
    with open(facts_file) as f:
        facts = json.load(f)
    if quantize and not os.path.isfile(os.path.join(int8_dir, 'model.onnx')):
        quantize_export(fp32_dir, int8_dir, _golden_images(), '2 COCO images of the R18vd golden reference',
                        fp32_groups, tolerance, threads=cpu_threads)
    return facts, fp32_dir, int8_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', required=True)
    parser.add_argument('--work_dir', required=True)
    parser.add_argument('--weights', default='hashinit', choices=['hashinit', 'random'])
    parser.add_argument('--fp32_groups', nargs='*', default=None, choices=GROUPS,
                        help='groups kept float32 in the INT8 model built as --int8_name (default: the sweep decides)')
    parser.add_argument('--int8_name', default='int8', help='folder of the INT8 model to build in work_dir')
    parser.add_argument('--compare', nargs='+', default=None,
                        help='INT8 folders of work_dir (built before) to time against float32; default: build '
                             'and time --int8_name')
    parser.add_argument('--tolerance', type=float, default=0.05)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--output', default=None)
    parser.add_argument('--note', action='append', default=[])
    args = parser.parse_args(argv)
    report = {'tool': 'benchmarks/int8_speed.py', 'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': machine()}
    report['model'], fp32_dir, _ = build(args.config, args.work_dir, args.weights, args.int8_name, args.fp32_groups,
                                         args.tolerance, args.cpu_threads, quantize=not args.compare)
    names = args.compare or [args.int8_name]
    images = _golden_images()
    ref = OrtRunner(os.path.join(fp32_dir, 'model.onnx'), args.cpu_threads)(images.feeds)
    report['int8'] = {}
    for name in names:
        with open(os.path.join(args.work_dir, name, 'infer_cfg.yml')) as f:
            import yaml
            quant = yaml.safe_load(f)['quantization']
        got = OrtRunner(os.path.join(args.work_dir, name, 'model.onnx'), args.cpu_threads)(images.feeds)
        quant['drift_on_golden_images'] = {f'top_{k}': detection_drift(ref, got, k) for k in (10, 100)}
        report['int8'][name] = quant
    rounds = []
    for index in range(args.rounds):
        row = {'fp32': run_worker('onnxruntime', fp32_dir, [3, 640, 640], 1, args.cpu_threads, args.warmup,
                                  args.runs, int8_probe=True)}
        for name in names:
            row[name] = run_worker('onnxruntime', os.path.join(args.work_dir, name), [3, 640, 640], 1,
                                   args.cpu_threads, args.warmup, args.runs, int8_probe=True)
            row[f'speedup_{name}'] = round(row['fp32']['latency_ms']['median'] / row[name]['latency_ms']['median'], 3)
        print(f'round {index}: ' + ', '.join(f"{k} {v['latency_ms']['median']:.0f} ms" if isinstance(v, dict)
                                             else f'{k} x{v}' for k, v in row.items()), file=sys.stderr)
        rounds.append(row)
    report['settings'] = {'cpu_threads': args.cpu_threads, 'batch_size': 1, 'input_hw': [640, 640],
                          'warmup': args.warmup, 'runs': args.runs, 'rounds': args.rounds}
    report['rounds'] = rounds
    report['speedup'] = {name: {'median': float(np.median(v)), 'min': min(v), 'max': max(v)} for name, v in (
        (name, [r[f'speedup_{name}'] for r in rounds]) for name in names)} if rounds else {}
    report['machine']['load_avg_1min_after'] = os.getloadavg()[0]
    report['notes'] = args.note
    emit_report(report, args.output)
    return report


if __name__ == '__main__':
    main()
