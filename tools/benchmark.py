"""CPU latency / FPS of an RT-DETR config per engine, each figure also as a fraction of a float32 GEMM.

    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml [-o weights=W] [--image_shape 3 640 640]
        [--engines dygraph paddle paddle_mkldnn onnxruntime] [--batch_sizes 1 2] [--cpu_threads 2]
        [--warmup 3] [--runs 10] [--profile] [--output benchmarks/x.json] [--note "..."]

The model is exported once (random weights with seed 0 unless `-o weights=` is given); then every engine and
batch size runs in its own process with `cpu_threads` math threads: warm-up, `runs` timed runs of the model
(inputs already preprocessed; copies in and out included), a numpy float32 GEMM (2048^3) measured right
before and after as this machine's reference speed (shared VMs drift by 1.5x). GFLOPs count a multiply-add
as 2 (convolutions, linear layers and attention matmuls) of the model each engine runs: RepVGG-fused for the
exported engines, unfused for dygraph (as tools/eval.py runs it). dygraph also
reports its stages (backbone, encoder, transformer = query selection + decoder, post-process); --profile adds
the per-op share of Paddle Inference / onnxruntime. Prints the JSON (and writes it to --output).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ENGINES = ('dygraph', 'paddle', 'paddle_mkldnn', 'onnxruntime')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gemm_gflops(n=2048, repeats=5):
    """float32 n x n x n GEMM speed of numpy (median of `repeats` after one warm-up), in GFLOP/s."""
    a = np.random.RandomState(0).rand(n, n).astype('float32')
    b = np.random.RandomState(1).rand(n, n).astype('float32')
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def _timed(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def _stats_ms(times):
    return {'median': round(1e3 * float(np.median(times)), 2), 'p90': round(1e3 * float(np.percentile(times, 90)), 2),
            'min': round(1e3 * float(times.min()), 2), 'runs': int(len(times))}


# ---------------------------------------------------------------- model preparation (parent process)

def count_gflops(model, inputs):
    """GFLOPs of one eval forward per top-level part (backbone, neck, transformer), a multiply-add counted as 2:
    Conv2D, Linear, and MultiHeadAttention's packed projections (F.linear, not a Linear layer) and matmuls.
    The deformable sampling, norms and activations are left out (< 1% of the total)."""
    import paddle
    from ppdet_rtdetr.modeling.layers import MultiHeadAttention
    totals = {}

    def conv(layer, inp, out):
        kh, kw = layer._kernel_size
        return 2 * int(np.prod(out.shape)) * layer._in_channels // layer._groups * kh * kw

    def linear(layer, inp, out):
        return 2 * int(np.prod(out.shape)) * layer.weight.shape[0]

    def attention(layer, inp, out):
        (b, lq, c), lk = inp[0].shape, inp[1].shape[1]
        return 2 * b * (lq + 2 * lk) * c * c + 2 * 2 * b * lq * lk * c  # q/k/v projections, qk^T and av

    counters = {paddle.nn.Conv2D: conv, paddle.nn.Linear: linear, MultiHeadAttention: attention}

    def hook(part, count):
        def add(layer, inp, out):
            totals[part] = totals.get(part, 0) + count(layer, inp, out)
        return add

    hooks = [layer.register_forward_post_hook(hook(name.split('.')[0], counters[type(layer)]))
             for name, layer in model.named_sublayers() if type(layer) in counters]
    with paddle.no_grad():
        model(inputs)
    for handle in hooks:
        handle.remove()
    return {part: flops / 1e9 for part, flops in totals.items()}


def prepare(args, work_dir):
    """Export the config to work_dir/model (+ model.onnx) and count its GFLOPs; returns the model facts."""
    import paddle
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create, load_config, merge_config
    from ppdet_rtdetr.engine.checkpoint import load_model_weights
    from ppdet_rtdetr.export import build_export_model, export_inference_model, export_onnx, resolve_export_size

    cfg = load_config(args.config)
    merge_config(args.opt)
    h, w = resolve_export_size(cfg, args.image_shape)
    paddle.seed(0)
    model = create(cfg.architecture)
    # speed does not depend on the values: the config's default `weights` (a training output) is not needed
    if args.opt.get('weights'):
        load_model_weights(model, args.opt['weights'])
    weights = os.path.join(work_dir, 'weights.pdparams')
    paddle.save(model.state_dict(), weights)  # unfused: the dygraph worker loads it into a fresh model
    inputs = {'image': paddle.rand([1, 3, h, w]), 'im_shape': paddle.to_tensor([[h, w]], 'float32'),
              'scale_factor': paddle.ones([1, 2])}
    model.eval()
    unfused = count_gflops(model, inputs)
    model = build_export_model(cfg, weights)
    facts = {'config': os.path.relpath(args.config, ROOT), 'overrides': args.opt, 'input_hw': [h, w],
             'weights': args.opt.get('weights') or 'random (seed 0)',
             'params_M': round(sum(int(np.prod(p.shape)) for p in model.parameters()) / 1e6, 2),
             'gflops_per_image_by_part': {k: round(v, 3) for k, v in count_gflops(model, inputs).items()},
             # what dygraph eval runs (RepVGG blocks with both branches), so what its GFLOP/s are counted on
             'gflops_per_image_by_part_unfused': {k: round(v, 3) for k, v in unfused.items()}}
    for key in ('', '_unfused'):
        facts['gflops_per_image' + key] = round(sum(facts['gflops_per_image_by_part' + key].values()), 3)
    model_dir = export_inference_model(cfg, model, os.path.join(work_dir, 'model'))
    if 'onnxruntime' in args.engines:
        export_onnx(model_dir)
    return facts, model_dir, weights


# ---------------------------------------------------------------- engines (one worker process each)

def _load_deploy(relpath, name):
    import importlib.util
    sys.path.insert(0, os.path.join(ROOT, 'deploy', 'python'))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'deploy', relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dygraph_runner(args, inputs):
    """(run, stages) of the eval-mode dygraph model, as tools/eval.py runs it (RepVGG not fused)."""
    import paddle
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create, load_config, merge_config
    from ppdet_rtdetr.engine.checkpoint import load_model_weights
    paddle.base.core.set_num_threads(args.cpu_threads)
    cfg = load_config(args.config)
    merge_config(args.opt)
    merge_config({'eval_size': list(args.image_shape[1:])})
    model = create(cfg.architecture)
    load_model_weights(model, args.weights)
    model.eval()
    x = {k: paddle.to_tensor(v) for k, v in inputs.items()}

    def run():
        with paddle.no_grad():
            model(x)['bbox'].numpy()

    def stages():
        """Wall time of each stage of RTDETRDetector._forward, in order."""
        marks = [time.perf_counter()]
        with paddle.no_grad():
            feats = model.backbone(x)
            marks.append(time.perf_counter())
            feats = model.neck(feats)
            marks.append(time.perf_counter())
            out = model.transformer(feats, None, x)
            marks.append(time.perf_counter())
            model.post_process(model.detr_head(out, feats), x['im_shape'], x['scale_factor'])[0].numpy()
            marks.append(time.perf_counter())
        return np.diff(marks)

    return run, stages


def _engine_runner(args, inputs):
    if args.worker == 'onnxruntime':
        detector = _load_deploy('onnxruntime/infer.py', 'deploy_ort').OrtDetector(args.model_dir,
                                                                                   cpu_threads=args.cpu_threads)
    else:
        detector = _load_deploy('python/infer.py', 'deploy_paddle').PaddleDetector(
            args.model_dir, cpu_threads=args.cpu_threads, enable_mkldnn=args.worker == 'paddle_mkldnn')
    feeds = {name: inputs[name] for name in detector.input_names}
    return lambda: detector._run(feeds)


def _paddle_op_totals(args, runs):
    """{op type: total ms} of Paddle Inference's profile report after `runs` runs (in a fresh process)."""
    proc = subprocess.run([sys.executable, __file__, '--worker', args.worker, '--paddle_profile', str(runs),
                           '--model_dir', args.model_dir, '--batch_size', str(args.batch_size), '--cpu_threads',
                           str(args.cpu_threads), '-c', args.config, '--image_shape'] +
                          [str(s) for s in args.image_shape], capture_output=True, text=True)
    totals = {}
    # the first table: "Event  Calls  Total ..." rows, nested (indented) rows under some, a blank line after
    for line in (proc.stdout + proc.stderr).split('Event Summary')[1].splitlines()[3:]:
        if not line.strip():
            break
        fields = line.split()
        if not line[0].isspace() and fields[0].startswith(('onednn_op.', 'pd_op.')):
            op = fields[0].split('.', 1)[1]
            totals[op] = totals.get(op, 0.) + float(fields[2])
    return totals


def _op_profile(args, inputs):
    """Share of the run time per op type, from onnxruntime's profiler or Paddle Inference's report."""
    if args.worker == 'onnxruntime':
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = args.cpu_threads, True, 3
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), 'ort')
        session = ort.InferenceSession(os.path.join(args.model_dir, 'model.onnx'), options)
        feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
        for _ in range(3):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = [e for e in json.load(f) if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
        by_op = {}
        for e in events[len(events) // 3:]:  # after the first (warm-up) run
            by_op[e['args']['op_name']] = by_op.get(e['args']['op_name'], 0) + e['dur']
    else:
        # Paddle's report also counts the first run, which builds the oneDNN primitives and folds constants
        # (seconds on one op type): the steady state is the report of 4 runs minus the report of 1
        first, four = (_paddle_op_totals(args, runs) for runs in (1, 4))
        by_op = {op: t - first.get(op, 0.) for op, t in four.items() if t > first.get(op, 0.)}
    total = sum(by_op.values())
    return {op: round(t / total, 3) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:10]}


def worker(args):
    """One engine at one batch size; prints one JSON line."""
    rng = np.random.RandomState(0)
    _, h, w = args.image_shape
    b = args.batch_size
    inputs = {'image': rng.rand(b, 3, h, w).astype('float32'), 'im_shape': np.array([[h, w]] * b, 'float32'),
              'scale_factor': np.ones([b, 2], 'float32')}
    if args.paddle_profile:  # only prints Paddle Inference's op report, read by _op_profile
        from paddle import inference
        config = inference.Config(*_load_deploy('python/preprocess.py', 'deploy_pre').find_model_files(args.model_dir))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(args.cpu_threads)
        # Paddle 3 turns oneDNN on by default on CPU: off unless asked, as PaddleDetector does
        if args.worker == 'paddle_mkldnn':
            config.enable_mkldnn()
        else:
            config.disable_mkldnn()
        config.enable_profile()
        predictor = inference.create_predictor(config)
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(inputs[name])
        for _ in range(args.paddle_profile):
            predictor.run()
        return
    result = {'gemm_gflops_before': round(gemm_gflops(args.gemm_size), 1)}
    stages = None
    if args.worker == 'dygraph':
        run, stages = _dygraph_runner(args, inputs)
    else:
        run = _engine_runner(args, inputs)
    result['latency_ms'] = _stats_ms(_timed(run, args.warmup, args.runs))
    if stages is not None:
        stage_times = np.array([stages() for _ in range(max(3, args.runs // 2))])
        names = ('backbone', 'encoder', 'transformer (query selection + decoder)', 'post_process')
        result['stages_ms'] = {n: round(1e3 * float(t), 2) for n, t in zip(names, np.median(stage_times, 0))}
    if args.profile and args.worker != 'dygraph':
        result['op_share'] = _op_profile(args, inputs)
    result['gemm_gflops_after'] = round(gemm_gflops(args.gemm_size), 1)
    print('BENCHMARK ' + json.dumps(result))


# ---------------------------------------------------------------- command line (parent process)

def _machine():
    with open('/proc/cpuinfo') as f:
        cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), platform.machine())
    return {'cpu': cpu, 'logical_cpus': os.cpu_count(), 'python': platform.python_version(),
            'numpy': np.__version__, 'load_avg_1min_before': os.getloadavg()[0]}


def _worker_env(threads):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open('/proc/cpuinfo') as f:
        amd = 'AuthenticAMD' in f.read()
    if amd:
        # the MKL that Paddle bundles picks its slow generic GEMM on AMD CPUs unless told to use AVX2 (3x on
        # dygraph matmuls here); Paddle Inference's oneDNN kernels and onnxruntime do not use MKL
        env.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    return env


def run_worker(args, engine, batch, model_dir, weights):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', engine, '--model_dir', model_dir, '--weights',
           weights, '--batch_size', str(batch), '--cpu_threads', str(args.cpu_threads), '--warmup', str(args.warmup),
           '--runs', str(args.runs), '--gemm_size', str(args.gemm_size), '-c', args.config, '--image_shape',
           *[str(s) for s in args.image_shape]] + (['--profile'] if args.profile else [])
    cmd += ['-o'] + [f'{k}={json.dumps(v)}' for k, v in args.opt.items()] if args.opt else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(args.cpu_threads))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('BENCHMARK ')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f'{engine} batch {batch} failed:\n{proc.stderr[-3000:]}')
    return json.loads(lines[-1][len('BENCHMARK '):])


def summarize(result, gflops, batch):
    """Adds FPS, GFLOP/s and the fractions of the GEMM rate (the mean of the two GEMM measurements)."""
    seconds = result['latency_ms']['median'] / 1e3
    gemm = (result['gemm_gflops_before'] + result['gemm_gflops_after']) / 2
    result['fps'] = round(batch / seconds, 3)
    result['gflops_per_s'] = round(batch * gflops / seconds, 2)
    result['fraction_of_gemm'] = round(batch * gflops / seconds / gemm, 3)
    return result


def _stage_fractions(stages_ms, by_part, gemm, batch):
    """GFLOP/s and fraction of the GEMM rate of each dygraph stage (post-process has no counted FLOPs)."""
    parts = {'backbone': 'backbone', 'encoder': 'neck', 'transformer (query selection + decoder)': 'transformer'}
    out = {}
    for stage, ms in stages_ms.items():
        gflops = batch * by_part.get(parts.get(stage, ''), 0.0)
        out[stage] = {'ms': ms, 'share_of_time': round(ms / sum(stages_ms.values()), 3),
                      'gflops': round(gflops, 2), 'fraction_of_gemm': round(gflops / (ms / 1e3) / gemm, 3)}
    return out


def parse_args(argv=None):
    from ppdet.utils.cli import ArgsParser
    from ppdet_rtdetr.cli import merge_opt_lists
    parser = ArgsParser()
    parser.add_argument('--image_shape', nargs=3, type=int, default=None, metavar=('C', 'H', 'W'))
    parser.add_argument('--engines', nargs='+', default=list(ENGINES), choices=ENGINES)
    parser.add_argument('--batch_sizes', nargs='+', type=int, default=[1])
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--gemm_size', type=int, default=2048)
    parser.add_argument('--profile', action='store_true', help='add the per-op share of Paddle Inference / ORT')
    parser.add_argument('--output', default=None, help='also write the JSON here')
    parser.add_argument('--note', action='append', default=[], help='free text stored in the JSON (repeatable)')
    # worker-only options
    parser.add_argument('--worker', default=None, choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument('--model_dir', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--weights', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--batch_size', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--paddle_profile', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(merge_opt_lists(sys.argv[1:] if argv is None else argv))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    report = {'tool': 'tools/benchmark.py', 'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': _machine(),
              'settings': {'cpu_threads': args.cpu_threads, 'warmup': args.warmup, 'runs': args.runs,
                           'gemm': f'numpy float32 {args.gemm_size}^3', 'env': {
                               k: v for k, v in _worker_env(args.cpu_threads).items()
                               if k.endswith('_THREADS') or k.startswith('MKL_DEBUG')}}}
    with tempfile.TemporaryDirectory() as work_dir:
        report['model'], model_dir, weights = prepare(args, work_dir)
        args.image_shape = [3] + report['model']['input_hw']
        results = []
        for engine in args.engines:
            for batch in args.batch_sizes:
                key = '_unfused' if engine == 'dygraph' else ''
                result = summarize(run_worker(args, engine, batch, model_dir, weights),
                                   report['model']['gflops_per_image' + key], batch)
                if 'stages_ms' in result:
                    gemm = (result['gemm_gflops_before'] + result['gemm_gflops_after']) / 2
                    result['stages'] = _stage_fractions(result.pop('stages_ms'),
                                                        report['model']['gflops_per_image_by_part' + key], gemm, batch)
                results.append(dict(engine=engine, batch_size=batch, **result))
                print(f"{engine:14s} batch {batch}: {result['latency_ms']['median']:9.1f} ms  "
                      f"{result['fraction_of_gemm']:.0%} of GEMM", file=sys.stderr)
    report['results'] = results
    report['machine']['load_avg_1min_after'] = os.getloadavg()[0]
    report['notes'] = args.note
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text + '\n')
    return report


if __name__ == '__main__':
    main()
