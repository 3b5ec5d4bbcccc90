"""This machine's reference speeds and the timing helpers every benchmark shares.

Shared VMs drift by 1.5x within minutes, so each figure is read against a GEMM measured right before and
after it: the float32 rate (the faster of numpy's BLAS and Paddle's CPU matmul), and onnxruntime's uint8 x
int8 MatMulInteger (the int8 rate; on AVX512-VNNI it runs at about 3-4x the float32 rate, on AVX2 without
VNNI at about 2x).
"""
import os
import platform
import time

import numpy as np

__all__ = ['gemm_gflops', 'gemm_gflops_fresh', 'int8_gemm_gops', 'timed', 'stats_ms', 'machine', 'harness_env',
           'worker_env']


def _median_rate(fn, flops, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / float(np.median(times)) / 1e9


def gemm_gflops(n=2048, repeats=5):
    """float32 n x n x n GEMM speed of this machine (median of `repeats` after one warm-up), in GFLOP/s: the
    faster of numpy's BLAS and Paddle's CPU matmul (MKL). Either alone can miss the hardware: on an AMD EPYC
    MKL ran its generic path (see worker_env), on a Xeon numpy's OpenBLAS ran at 41 GFLOP/s where MKL and
    onnxruntime's MLAS ran at 195."""
    import paddle
    a = np.random.RandomState(0).rand(n, n).astype('float32')
    b = np.random.RandomState(1).rand(n, n).astype('float32')
    pa, pb = paddle.to_tensor(a, place=paddle.CPUPlace()), paddle.to_tensor(b, place=paddle.CPUPlace())
    return max(_median_rate(lambda: a @ b, 2 * n ** 3, repeats),
               _median_rate(lambda: paddle.matmul(pa, pb).numpy(), 2 * n ** 3, repeats))


def gemm_gflops_fresh(n=2048):
    """`gemm_gflops` measured in a new process with this one's environment. A worker reads its "after" probe
    this way: once Paddle Inference has run with oneDNN, the process's own GEMM stays ~35% slower (196 ->
    125 GFLOP/s on R18vd's worker), which would flatter the engine just measured."""
    import subprocess
    import sys
    code = f'from harness.probe import gemm_gflops; print(gemm_gflops({int(n)}))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env=harness_env()).stdout
    return float(out.strip().splitlines()[-1])


def int8_gemm_gops(n=2048, repeats=5, threads=None):
    """uint8 x int8 n x n x n MatMulInteger speed of onnxruntime's CPU kernels (MLAS), in GOP/s (a multiply-add
    counted as 2), with `threads` intra-op threads (default: OMP_NUM_THREADS, else 1)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node('MatMulInteger', ['a', 'b'], ['y'])], 'int8_gemm',
        [helper.make_tensor_value_info('a', TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info('b', TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info('y', TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get('OMP_NUM_THREADS', 1))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    rng = np.random.RandomState(0)
    feeds = {'a': rng.randint(0, 256, (n, n)).astype('uint8'), 'b': rng.randint(-128, 128, (n, n)).astype('int8')}
    onnx.checker.check_model(model)
    return _median_rate(lambda: session.run(None, feeds), 2 * n ** 3, repeats)


def timed(fn, warmup, runs):
    """Seconds of each of `runs` calls of fn after `warmup` untimed ones -> ndarray [runs]."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def stats_ms(times):
    """median / p90 / min of `times` (seconds) in ms, and the number of runs."""
    return {'median': round(1e3 * float(np.median(times)), 2), 'p90': round(1e3 * float(np.percentile(times, 90)), 2),
            'min': round(1e3 * float(times.min()), 2), 'runs': int(len(times))}


def _cpu_flags():
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
    return set()


def machine():
    """CPU model, core count, software versions, the int8 instructions the CPU has and the 1-min load."""
    with open('/proc/cpuinfo') as f:
        cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), platform.machine())
    flags = _cpu_flags()
    return {'cpu': cpu, 'logical_cpus': os.cpu_count(), 'python': platform.python_version(),
            'numpy': np.__version__, 'int8_isa': sorted(flags & {'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_int8'}),
            'load_avg_1min_before': os.getloadavg()[0]}


# benchmarks/, the folder that holds this package: workers import `harness` from it
_HARNESS_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness_env(*first):
    """This process's environment with `first` and benchmarks/ (which holds `harness`) first on PYTHONPATH: what a
    child process that imports `harness` runs with."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*first, _HARNESS_PARENT, os.environ.get('PYTHONPATH', '')]))


def worker_env(threads, root):
    """Environment of a worker process: `root` and benchmarks/ first on PYTHONPATH, every math library at
    `threads` threads."""
    env = dict(harness_env(root),
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open('/proc/cpuinfo') as f:
        amd = 'AuthenticAMD' in f.read()
    if amd:
        # the MKL that Paddle bundles picks its slow generic GEMM on AMD CPUs unless told to use AVX2 (3x on
        # dygraph matmuls here); Paddle Inference's oneDNN kernels and onnxruntime do not use MKL
        env.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    return env
