"""Compiled CPU operators of exported models: Paddle custom operators, built from source on first use.

`ms_deform_attn_cpu` is the sampling of `MSDeformableAttention` (bilinear `grid_sample` per level, weighted sum
over the points) as one operator, bit-equal to `ms_deform_attn_core` (ms_deform_attn_cpu.cc says how). An
export made with `export.cpu_fused_attention: True` uses it: Paddle Inference + oneDNN then runs RT-DETR
R18vd at 640 in 0.84 of the portable export's time (benchmarks/README.md). The library is built with Paddle's
C++ extension tool (a C++ compiler, ~15 s once; cached in Paddle's extension folder, `PADDLE_EXTENSION_DIR`)
and copied into the export, whose deploy scripts register it before they create a predictor.

A library is compiled against one Paddle's headers and runs only with that Paddle: builds are kept per Paddle
version (`paddle_build_tag()`, a folder of its own in the extension folder), and an export records the version
it was built with (infer_cfg.yml `custom_op_paddle_version`), which the deploy scripts compare with theirs.

When Paddle's extension folder cannot be written (read-only, another user's, a file in its place), the library
already built there is used if it is current, else it is built in a private temporary folder; one line says
which. "Current" is Paddle's own check (the build flags recorded in `version.txt`, and the library newer than
its source), run on a copy of the two files in the private folder, so nothing is written where it cannot be.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import paddle

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['LIBRARY_NAME', 'OP_NAME', 'load_cpu_ops', 'paddle_build_tag', 'register_library', 'ms_deform_attn_cpu']

LIBRARY_NAME = 'ppdet_rtdetr_cpu_ops'
OP_NAME = 'ppdet_rtdetr_ms_deform_attn'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ms_deform_attn_cpu.cc')
# -ffp-contract=off: no fused multiply-adds, so each product and sum rounds as in Paddle's kernels
_CFLAGS = ['-O3', '-ffp-contract=off']
# Paddle's `load` builds and registers at once; the child process only builds (see register_library)
_BUILD = ('import sys, warnings; warnings.simplefilter("ignore"); from paddle.utils.cpp_extension import load; '
          'load(name=sys.argv[1], sources=[sys.argv[2]], build_directory=sys.argv[3], extra_cxx_cflags=sys.argv[4:])')
_library = None


def register_library(path):
    """Register the operators of the library file `path` in this process, unless they already are.

    Paddle aborts the process when a second copy of the same operators registers (each exported folder carries
    its own copy of the library, and the build folder has one), so only the first copy a process meets is
    loaded (copies made from one ppdet_rtdetr version hold the same code).
    """
    from paddle.base import core
    if OP_NAME not in core.get_all_op_names():
        paddle.utils.cpp_extension.load_op_meta_info_and_register_op(path)


def _lock(f):
    try:
        import fcntl
    except ImportError:  # Windows: no build lock
        return
    fcntl.flock(f, fcntl.LOCK_EX)


def _extension_folder():
    # paddle.utils.cpp_extension.get_build_directory's answer, without its makedirs (which may fail here)
    return os.environ.get('PADDLE_EXTENSION_DIR') or os.path.join(os.path.expanduser('~/.cache'), 'paddle_extensions')


def paddle_build_tag():
    """'paddle-<version>-<commit[:10]>': the Paddle build a compiled library belongs to (its headers and ABI)."""
    return 'paddle-{}-{}'.format(paddle.__version__, paddle.version.commit[:10])


def _library_path(folder):
    """Where Paddle's extension tool writes the library when asked to build in `folder`."""
    return os.path.join(folder, LIBRARY_NAME, LIBRARY_NAME + '.so')


def _build(folder):
    """Build the library in the extension folder `folder` unless Paddle finds it current; returns its path.

    Raises:
        OSError: `folder` cannot be written (its lock file cannot be created).
        RuntimeError: the build failed, with the compiler's last output.
    """
    path = _library_path(folder)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # one build at a time: processes started together (parallel exports) would write the same files
    with open(os.path.join(os.path.dirname(path), '.lock'), 'w') as lock:
        _lock(lock)
        proc = subprocess.run([sys.executable, '-c', _BUILD, LIBRARY_NAME, _SOURCE, folder] + _CFLAGS,
                              capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(path):
        raise RuntimeError(
            f"export.cpu_fused_attention needs ppdet_rtdetr's CPU operator, built from {_SOURCE} with a C++ "
            "compiler (g++) and Paddle's headers; the build failed. Export without the option (the "
            f"portable graph) or install a compiler. Build output:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return path


def _stamp(path):
    return (os.stat(path).st_mtime_ns, os.stat(path).st_size) if os.path.isfile(path) else None


def _build_privately(shared, error):
    """The library of the unwritable extension folder `shared` if current, else one built in a new temporary
    folder (see the module docstring); logs one line naming both folders and `error`."""
    private = tempfile.mkdtemp(prefix='ppdet_rtdetr_ops_')
    built, copy = _library_path(shared), _library_path(private)
    if os.path.isfile(built):
        os.makedirs(os.path.dirname(copy))
        for name in (os.path.basename(built), 'version.txt'):
            if os.path.isfile(os.path.join(os.path.dirname(built), name)):
                shutil.copy2(os.path.join(os.path.dirname(built), name), os.path.dirname(copy))  # keeps mtimes
    before = _stamp(copy)
    try:
        path = _build(private)
    except BaseException:
        shutil.rmtree(private)
        raise
    if before is not None and _stamp(path) == before:  # Paddle left the copy alone: the library is current
        shutil.rmtree(private)
        logger.info(f"Paddle's extension folder {shared} is not writable ({error}); using the CPU operator "
                    f"library already built there, {built}")
        return built
    logger.warning(f"Paddle's extension folder {shared} is not writable ({error}) and holds no current CPU "
                   f"operator library: built it in {os.path.dirname(path)} instead")
    return path


@paddle.jit.not_to_static  # called while tracing an export: plain Python (its `global` defeats the converter)
def load_cpu_ops():
    """Build the operator library if its source changed (in a child process; ~15 s, cached in Paddle's
    extension folder, or see the module docstring when that cannot be written), register it in this process,
    and return the library file's path.

    Raises:
        RuntimeError: the build failed (no C++ compiler, or Paddle's headers missing), with the compiler's
            last output.
    """
    global _library
    if _library is None:
        # one build folder per Paddle build: a library compiled against another Paddle's headers is never reused
        shared = os.path.join(_extension_folder(), paddle_build_tag())
        try:
            path = _build(shared)
        except OSError as e:
            path = _build_privately(shared, e)
        register_library(path)
        _library = path
    return _library


def _shapes_tensor(spatial_shapes):
    """(h, w) of each level -> int64 [nl, 2]; in a dynamic-size trace h and w are tensors computed from the
    input, in a fixed-size one Python ints (constants)."""
    sizes = [paddle.full([1], s, 'int64') if isinstance(s, int) else s.astype('int64').reshape([1])
             for hw in spatial_shapes for s in hw]
    # nl * [1] -> [nl*2] -> [nl, 2]
    return paddle.concat(sizes).reshape([-1, 2])


def ms_deform_attn_cpu(value, spatial_shapes, sampling_locations, attention_weights, num_points_list):
    """`ms_deform_attn_core(..., method='default')` (same arguments, bit-equal output [b, q, nh * c/nh]) as one
    CPU operator, float32 only. It has no gradient: for inference and export (dygraph, or a Paddle 3 PIR trace).
    """
    load_cpu_ops()
    # what the Python API Paddle generates for a custom operator calls in dygraph and PIR programs; one output
    return paddle._C_ops._run_custom_op(OP_NAME, value, sampling_locations, attention_weights,
                                        _shapes_tensor(spatial_shapes), [int(n) for n in num_points_list])[0]
