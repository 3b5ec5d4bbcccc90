"""One engine at one batch size, in its own process (so that every engine gets a fresh allocator and thread
pool and the math libraries see the thread count of the run); prints one `BENCHMARK {json}` line.

    python -m harness.worker --engine onnxruntime --model_dir D [--model_file F] --config C
        --weights W --image_shape 3 H W [--batch_size 1 --cpu_threads 2 --warmup 3 --runs 10 --profile] [-o k=v]
"""
import argparse
import json

import numpy as np

from .probe import gemm_gflops, gemm_gflops_fresh, int8_gemm_gops, stats_ms, timed
from .runners import STAGES, dygraph_runner, engine_runner, ort_op_share, paddle_op_totals

__all__ = ['ENGINES', 'OFFICIAL_ENGINES', 'measure', 'main']

ENGINES = ('dygraph', 'paddle', 'paddle_mkldnn', 'onnxruntime', 'openvino')
# how the official export runs on oneDNN (runners.engine_runner); for benchmarks/cpu_speed.py
OFFICIAL_ENGINES = ('paddle_mkldnn_official',)


def _dygraph_model(config, opt, weights, image_shape):
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create, merge_config
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.engine.checkpoint import load_model_weights
    from ppdet_rtdetr.config import load_config
    cfg = load_config(config)
    apply_overrides(opt)
    merge_config({'eval_size': list(image_shape[1:])})
    model = create(cfg.architecture)
    load_model_weights(model, weights)
    model.eval()
    return model


def measure(args):
    """The result dict of one worker: latency, GEMM rates before and after, stages (dygraph), op shares."""
    rng = np.random.RandomState(0)
    _, h, w = args.image_shape
    b = args.batch_size
    inputs = {'image': rng.rand(b, 3, h, w).astype('float32'), 'im_shape': np.array([[h, w]] * b, 'float32'),
              'scale_factor': np.ones([b, 2], 'float32')}
    result = {'gemm_gflops_before': round(gemm_gflops(args.gemm_size), 1)}
    if args.int8_probe:
        result['int8_gemm_gops_before'] = round(int8_gemm_gops(args.gemm_size, threads=args.cpu_threads), 1)
    stages = None
    if args.engine == 'dygraph':
        import paddle
        paddle.base.core.set_num_threads(args.cpu_threads)
        run, stages = dygraph_runner(_dygraph_model(args.config, args.opt, args.weights, args.image_shape), inputs)
    else:
        run = engine_runner(args.engine, args.model_dir, inputs, args.cpu_threads, args.model_file)
    result['latency_ms'] = stats_ms(timed(run, args.warmup, args.runs))
    if stages is not None:
        stage_times = np.array([stages() for _ in range(max(3, args.runs // 2))])
        result['stages_ms'] = {name: round(1e3 * float(t), 2)
                               for (name, _), t in zip(STAGES, np.median(stage_times, 0))}
    if args.profile and args.engine == 'onnxruntime':
        result['op_share'] = ort_op_share(args.model_file or f'{args.model_dir}/model.onnx', inputs, args.cpu_threads)
    elif args.profile and args.engine in ('paddle', 'paddle_mkldnn'):
        result['op_share'] = paddle_op_totals(args.model_dir, inputs, args.cpu_threads, args.engine == 'paddle_mkldnn')
    result['gemm_gflops_after'] = round(gemm_gflops_fresh(args.gemm_size), 1)
    if args.int8_probe:
        result['int8_gemm_gops_after'] = round(int8_gemm_gops(args.gemm_size, threads=args.cpu_threads), 1)
    return result


def _kv(text):
    key, value = text.split('=', 1)
    return key, json.loads(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--engine', required=True, choices=ENGINES + OFFICIAL_ENGINES)
    parser.add_argument('--model_dir', default=None)
    parser.add_argument('--model_file', default=None, help='onnxruntime: another ONNX file (e.g. the INT8 one)')
    parser.add_argument('-c', '--config', default=None)
    parser.add_argument('-o', '--opt', nargs='*', type=_kv, default=[], help='key=<json value> (dygraph)')
    parser.add_argument('--weights', default=None)
    parser.add_argument('--image_shape', nargs=3, type=int, required=True)
    parser.add_argument('--batch_size', type=int, default=1)
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--gemm_size', type=int, default=2048)
    parser.add_argument('--profile', action='store_true')
    parser.add_argument('--int8_probe', action='store_true', help='also measure the int8 GEMM rate')
    args = parser.parse_args(argv)
    args.opt = dict(args.opt)
    print('BENCHMARK ' + json.dumps(measure(args)), flush=True)


if __name__ == '__main__':
    main()
