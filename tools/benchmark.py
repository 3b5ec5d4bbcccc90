"""CPU latency / FPS of an RT-DETR config per engine, each figure also as a fraction of a float32 GEMM.

    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml [-o weights=W] [--image_shape 3 640 640]
        [--engines dygraph paddle paddle_mkldnn onnxruntime openvino] [--batch_sizes 1 2] [--cpu_threads 2]
        [--warmup 3] [--runs 10] [--profile] [--output benchmarks/x.json] [--note "..."]

The model is exported once (random weights with seed 0 unless `-o weights=` is given); then every engine and
batch size runs in its own process with `cpu_threads` math threads: warm-up, `runs` timed runs of the model
(inputs already preprocessed; copies in and out included), a numpy float32 GEMM (2048^3) measured right
before and after as this machine's reference speed. dygraph also reports its stages (backbone, encoder,
transformer, post-process); --profile adds the per-op share of Paddle Inference / onnxruntime. Prints the
JSON (and writes it to --output). The work is done by the benchmark library in benchmarks/harness (its
harness.py), which lives with the benchmarks, outside the installed package.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from harness.harness import emit_report, run_benchmark  # noqa: E402
from harness.worker import ENGINES  # noqa: E402
from ppdet_rtdetr.cli import ToolArgsParser  # noqa: E402


def parse_args(argv=None):
    parser = ToolArgsParser()
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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as work_dir:
        report = run_benchmark(args.config, args.opt, args.image_shape, args.engines, args.batch_sizes,
                               args.cpu_threads, work_dir, args.warmup, args.runs, args.gemm_size, args.profile)
    report = dict(tool='tools/benchmark.py', **report, notes=args.note)
    emit_report(report, args.output)
    return report


if __name__ == '__main__':
    main()
