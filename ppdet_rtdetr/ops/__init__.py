"""Compiled CPU operators of exported models: Paddle custom operators, built from source on first use.

`ms_deform_attn_cpu` is the sampling of `MSDeformableAttention` (bilinear `grid_sample` per level, weighted sum
over the points) as one operator, bit-equal to `ms_deform_attn_core` (ms_deform_attn_cpu.cc says how). An
export made with `export.cpu_fused_attention: True` uses it: Paddle Inference on CPU then runs RT-DETR R18vd
~15% faster under oneDNN (benchmarks/README.md). The library is built with Paddle's C++ extension tool (a C++
compiler, ~15 s once; cached in Paddle's extension folder, `PADDLE_EXTENSION_DIR`) and copied into the export,
whose deploy scripts register it before they create a predictor.
"""
import os
import warnings

import paddle

__all__ = ['LIBRARY_NAME', 'OP_NAME', 'load_cpu_ops', 'library_file', 'ms_deform_attn_cpu']

LIBRARY_NAME = 'ppdet_rtdetr_cpu_ops'
OP_NAME = 'ppdet_rtdetr_ms_deform_attn'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ms_deform_attn_cpu.cc')
# -ffp-contract=off: no fused multiply-adds, so each product and sum rounds as in Paddle's kernels
_CFLAGS = ['-O3', '-ffp-contract=off']
_module = None


def _build_dir():
    from paddle.utils.cpp_extension import get_build_directory
    return os.path.join(get_build_directory(), LIBRARY_NAME)


def _lock(f):
    try:
        import fcntl
    except ImportError:  # Windows: no build lock (one process builds at a time there in practice)
        return
    fcntl.flock(f, fcntl.LOCK_EX)


@paddle.jit.not_to_static  # called while tracing an export: plain Python (its `global` defeats the converter)
def load_cpu_ops():
    """Build (if its source changed) and register the operators in this process; return their Python module.

    Raises:
        RuntimeError: the build failed (no C++ compiler, or Paddle's headers missing), naming the source.
    """
    global _module
    if _module is None:
        from paddle.utils.cpp_extension import load
        os.makedirs(_build_dir(), exist_ok=True)
        # one build at a time: processes started together (benchmark workers) would write the same files
        with open(os.path.join(_build_dir(), '.lock'), 'w') as lock, warnings.catch_warnings():
            _lock(lock)
            warnings.simplefilter('ignore')  # "No ccache found"
            try:
                _module = load(name=LIBRARY_NAME, sources=[_SOURCE], extra_cxx_cflags=_CFLAGS)
            except Exception as e:  # Paddle raises RuntimeError / CalledProcessError / OSError by stage
                raise RuntimeError(
                    f'export.cpu_fused_attention needs ppdet_rtdetr\'s CPU operator, built from {_SOURCE} with '
                    f'a C++ compiler (g++) and Paddle\'s headers; the build failed: {e}. Export without the '
                    'option (the portable graph) or install a compiler.') from e
    return _module


def library_file():
    """Path of the built shared library (`load_cpu_ops` first), which an export copies next to its model."""
    load_cpu_ops()
    return os.path.join(_build_dir(), LIBRARY_NAME + '.so')


def _shapes_tensor(spatial_shapes):
    """(h, w) of each level -> int64 [nl, 2]; in a dynamic-size trace h and w are tensors computed from the
    input, in a fixed-size one Python ints (constants)."""
    sizes = [paddle.full([1], s, 'int64') if isinstance(s, int) else s.astype('int64').reshape([1])
             for hw in spatial_shapes for s in hw]
    # nl * [1] -> [nl*2] -> [nl, 2]
    return paddle.concat(sizes).reshape([-1, 2])


def ms_deform_attn_cpu(value, spatial_shapes, sampling_locations, attention_weights, num_points_list):
    """`ms_deform_attn_core(..., method='default')` (same arguments, bit-equal output [b, q, nh * c/nh]) as one
    CPU operator, float32 only. It has no gradient: for inference and export."""
    op = getattr(load_cpu_ops(), OP_NAME)
    return op(value, sampling_locations, attention_weights, _shapes_tensor(spatial_shapes),
              [int(n) for n in num_points_list])
