"""CPU speed against the official PaddleDetection RT-DETR, every figure of issue 14 in one run and one JSON.

    python benchmarks/cpu_speed.py --official_repo DIR --work_dir /tmp/cpu_speed [--models r18vd r50vd] \
        [--rounds 4] [--runs 5] [--pairs 0] [--train_rounds 2] [--train_steps 3] [--output benchmarks/cpu_speed.json]

For each model (640x640, batch 1, `--cpu_threads`, the name-hashed weights of tests/reference, which load into
both implementations: the parameter names are the official ones):
1. our fixed-size export (Paddle + ONNX) and its INT8 ONNX (tools/quantize.py's path, every group quantized,
   calibrated on the two golden COCO images), our CPU export of the same weights (export.cpu_fused_attention:
   the sampling as one compiled operator, for Paddle Inference on CPU) and the official export
   (benchmarks/official.py); all kept in work_dir between runs;
2. `--rounds` rounds; in each, every engine x implementation runs in its own worker process between two
   float32 GEMM probes (probe.gemm_gflops): Paddle Inference + oneDNN (ours, ours CPU; the official with its
   placement pass deleted, the only way it runs there), onnxruntime (ours, official, ours INT8); the order is
   reversed every other round.
Ratios are taken within a round (the VM's speed drifts between rounds) and summarised by their median.
With `--pairs N`, each comparison (ours / official on oneDNN and on onnxruntime, INT8 / float32) is also
timed in one process, the two models alternating run by run, N pairs (`paired`): between processes this
VM's speed varies more than some of the differences measured.
Then benchmarks/train_step.py: the R18vd training step (batch 2, denoising 100), ours against the official.
`targets` compares the medians with the issue's targets (the per-process rounds); the oneDNN fraction's is
taken on the CPU export, the one made for that engine.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from int8_speed import build  # noqa: E402
from harness.harness import emit_report, run_worker, summarize  # noqa: E402
from harness.probe import machine  # noqa: E402

MODELS = {'r18vd': 'rtdetr_r18vd_6x_coco.yml', 'r50vd': 'rtdetr_r50vd_6x_coco.yml'}
# (name, engine, implementation); 'int8' is our INT8 file in onnxruntime
RUNS = (('onednn_ours', 'paddle_mkldnn', 'ours'), ('onednn_ours_cpu', 'paddle_mkldnn', 'ours_cpu'),
        ('onednn_official', 'paddle_mkldnn_official', 'official'),
        ('ort_ours', 'onnxruntime', 'ours'), ('ort_official', 'onnxruntime', 'official'),
        ('ort_int8', 'onnxruntime', 'int8'))
TARGETS = {'int8_speedup': ('>=', 2.0), 'onednn_fraction_of_gemm_r18vd': ('>=', 0.85),
           'ort_ours_over_official_r50vd': ('<=', 1.0), 'train_step_ours_over_official': ('<=', 0.8)}


def official_export(repo, config, weights, ours_dir, out):
    """The official export of `weights` in `out` with our infer_cfg.yml (same preprocessing) and model.onnx."""
    from ppdet_rtdetr.export import export_onnx
    if not os.path.isfile(os.path.join(out, 'model.onnx')):
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        subprocess.run([sys.executable, os.path.join(HERE, 'official.py'), '--repo', repo, '--config',
                        os.path.join('configs', 'rtdetr', config), '--weights', weights, '--out', out],
                       check=True, env=env)
        shutil.copyfile(os.path.join(ours_dir, 'infer_cfg.yml'), os.path.join(out, 'infer_cfg.yml'))
        export_onnx(out)
    return out


def cpu_export(config, weights, work_dir):
    """tools/export_model.py with export.cpu_fused_attention of the unfused `weights` (what `build` exported
    from) at 640x640 into work_dir/cpu (kept between runs); returns the folder."""
    out = os.path.join(work_dir, 'cpu', os.path.splitext(os.path.basename(config))[0])
    if not os.path.isfile(os.path.join(out, 'infer_cfg.yml')):
        subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-c', config,
                        '--image_shape', '3', '640', '640', '--output_dir', os.path.join(work_dir, 'cpu'),
                        '-o', f'weights={weights}', 'export.cpu_fused_attention=True'], check=True, cwd=ROOT)
    return out


def _location(dirs, impl):
    """(exported folder, ONNX file or None) of an implementation: 'ours', 'official', or 'int8' (our export's
    folder with the INT8 file, which has no Paddle model of its own)."""
    if impl == 'int8':
        return dirs['ours'], os.path.join(dirs['int8'], 'model.onnx')
    return dirs[impl], None


def time_model(dirs, gflops, args, log=sys.stderr):
    """`args.rounds` rounds of every RUNS entry; returns (rounds, summary of the within-round ratios)."""
    rounds = []
    for index in range(args.rounds):
        row = {}
        for name, engine, impl in (RUNS if index % 2 == 0 else RUNS[::-1]):
            model_dir, model_file = _location(dirs, impl)
            result = run_worker(engine, model_dir, [3, 640, 640], 1, args.cpu_threads, args.warmup, args.runs,
                                model_file=model_file)
            row[name] = summarize(result, gflops, 1)
        row['ratios'] = {
            'onednn_ours_over_official': row['onednn_ours']['latency_ms']['median']
            / row['onednn_official']['latency_ms']['median'],
            'onednn_ours_cpu_over_official': row['onednn_ours_cpu']['latency_ms']['median']
            / row['onednn_official']['latency_ms']['median'],
            'ort_ours_over_official': row['ort_ours']['latency_ms']['median']
            / row['ort_official']['latency_ms']['median'],
            'int8_speedup': row['ort_ours']['latency_ms']['median'] / row['ort_int8']['latency_ms']['median']}
        row['ratios'] = {k: round(v, 3) for k, v in row['ratios'].items()}
        print(f'round {index}: ' + ', '.join(f"{k} {row[k]['latency_ms']['median']:.0f} ms"
                                              for k, _, _ in RUNS) + f" {row['ratios']}", file=log)
        rounds.append(row)
    summary = {key: _spread([r['ratios'][key] for r in rounds]) for key in rounds[0]['ratios']}
    for name, _, _ in RUNS:
        summary[f'fraction_of_gemm_{name}'] = _spread([r[name]['fraction_of_gemm'] for r in rounds])
    return rounds, summary


# (name, (engine, implementation) timed, (engine, implementation) it is divided by)
PAIRS = (('onednn_ours_over_official', ('paddle_mkldnn', 'ours'), ('paddle_mkldnn_official', 'official')),
         ('onednn_ours_cpu_over_official', ('paddle_mkldnn', 'ours_cpu'), ('paddle_mkldnn_official', 'official')),
         ('onednn_ours_cpu_over_ours', ('paddle_mkldnn', 'ours_cpu'), ('paddle_mkldnn', 'ours')),
         ('ort_ours_over_official', ('onnxruntime', 'ours'), ('onnxruntime', 'official')),
         ('ort_int8_over_fp32', ('onnxruntime', 'int8'), ('onnxruntime', 'ours')))


def _ort_runner(model_file, inputs, threads):
    """run() of an onnxruntime session whose threads do not spin after a run: two sessions alternating in one
    process otherwise compete with each other's spinning threads (R18vd float32 ran at 448 ms there, 330 alone)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = ort.InferenceSession(model_file, options, providers=['CPUExecutionProvider'])
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    return lambda: session.run(None, feeds)


def paired(dirs, args):
    """Per PAIRS entry, both models in this process, alternating for `args.pairs` pairs after 2 warm-ups:
    median latencies and the per-pair ratio (median, 10th and 90th percentile)."""
    from harness.runners import engine_runner
    inputs = {'image': np.random.RandomState(0).rand(1, 3, 640, 640).astype('float32'),
              'im_shape': np.array([[640, 640]], 'float32'), 'scale_factor': np.ones([1, 2], 'float32')}
    out = {}
    for name, *sides in PAIRS:
        runs = []
        for engine, impl in sides:
            model_dir, model_file = _location(dirs, impl)
            if engine == 'onnxruntime':
                runs.append(_ort_runner(model_file or os.path.join(model_dir, 'model.onnx'), inputs,
                                        args.cpu_threads))
            else:
                runs.append(engine_runner(engine, model_dir, inputs, args.cpu_threads))
        for run in runs * 2:
            run()
        times = [[], []]
        for i in range(args.pairs):
            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - start)
        ratios = np.array(times[0]) / np.array(times[1])
        out[name] = {'median_ms': [round(1e3 * float(np.median(t)), 1) for t in times],
                     'pair_ratio_median': round(float(np.median(ratios)), 3),
                     'pair_ratio_p10_p90': [round(float(q), 3) for q in np.percentile(ratios, [10, 90])]}
    return out


def _spread(values):
    return {'median': round(float(np.median(values)), 3), 'min': min(values), 'max': max(values)}


def targets(summaries, train):
    """{target: {value, target, met}} from the per-model summaries and the training-step report."""
    values = {'int8_speedup': min(s['int8_speedup']['median'] for s in summaries.values()),
              'onednn_fraction_of_gemm_r18vd': summaries.get('r18vd', {}).get(
                  'fraction_of_gemm_onednn_ours_cpu', {}).get('median'),
              'ort_ours_over_official_r50vd': summaries.get('r50vd', {}).get(
                  'ort_ours_over_official', {}).get('median'),
              'train_step_ours_over_official': (train or {}).get('ratio', {}).get('median')}
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = values[key]
        met = None if value is None else (value >= bound if op == '>=' else value <= bound)
        out[key] = {'value': value, 'target': f'{op} {bound}', 'met': met}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official_repo', required=True, help='PaddleDetection checkout (develop)')
    parser.add_argument('--work_dir', required=True)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--pairs', type=int, default=0, help='also time each comparison in one process, N pairs')
    parser.add_argument('--train_rounds', type=int, default=2, help='0: no training-step measurement')
    parser.add_argument('--train_steps', type=int, default=3)
    parser.add_argument('--output', default=None)
    parser.add_argument('--note', action='append', default=[])
    args = parser.parse_args(argv)
    repo = os.path.abspath(args.official_repo)
    report = {'tool': 'benchmarks/cpu_speed.py', 'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': machine(),
              'settings': {'input_hw': [640, 640], 'batch_size': 1, 'cpu_threads': args.cpu_threads,
                           'rounds': args.rounds, 'runs': args.runs, 'warmup': args.warmup, 'pairs': args.pairs},
              'models': {}}
    summaries = {}
    for key in args.models:
        work = os.path.join(args.work_dir, key)
        config = os.path.join(ROOT, 'configs', 'rtdetr', MODELS[key])
        facts, ours, int8 = build(config, work, int8_name='int8', fp32_groups=[], cpu_threads=args.cpu_threads)
        official = official_export(repo, MODELS[key], os.path.join(work, 'hashinit.pdparams'), ours,
                                   os.path.join(work, 'official'))
        dirs = {'ours': ours, 'official': official, 'int8': int8,
                'ours_cpu': cpu_export(config, os.path.join(work, 'weights.pdparams'), work)}
        report['models'][key] = {'facts': facts}
        if args.rounds:
            rounds, summaries[key] = time_model(dirs, facts['gflops_per_image'], args)
            report['models'][key].update(summary=summaries[key], rounds=rounds)
        if args.pairs:
            report['models'][key]['paired'] = paired(dirs, args)
    train = None
    if args.train_rounds:
        import train_step
        train = train_step.main(['--official_repo', repo, '--rounds', str(args.train_rounds), '--steps',
                                 str(args.train_steps), '--cpu_threads', str(args.cpu_threads)])
        report['train_step'] = train
    report['targets'] = targets(summaries, train) if summaries else None
    report['machine']['load_avg_1min_after'] = os.getloadavg()[0]
    report['notes'] = args.note
    emit_report(report, args.output)
    return report


if __name__ == '__main__':
    main()
