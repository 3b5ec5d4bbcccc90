"""The oneDNN library that ships inside the Paddle wheel (``paddle/libs/libdnnl.so.3``), reached through its C API.

Paddle Inference runs convolutions on oneDNN, but Paddle's dygraph does not: ``FLAGS_use_mkldnn`` leaves
dygraph convolutions on Paddle's im2col + GEMM kernels. This module gives Python the few oneDNN calls a
convolution gradient needs (``conv_grad.py``), with ctypes and no compiler. The wheel has the library but not
its headers, so the signatures (``_SIGNATURES``: every function called here, with its argument and result
types) and the constants below are transcribed from the oneDNN 3.x C API (``dnnl.h``, ``dnnl_types.h``,
``dnnl_common_types.h``); they are stable within major version 3. ``TESTED_VERSIONS`` lists the versions the
tests ran against; another 3.x version is used with one warning, and ``conv_grad``'s self-check compares its
gradients with Paddle's before any training step uses them.

Contract: ``library()`` returns the bound library or raises ``DnnlUnavailable`` (a Paddle build without
oneDNN, another major version); every call that returns a non-zero ``dnnl_status_t`` raises ``DnnlError``
naming the call. Every handle this module creates has one owner that destroys it: ``Memory.close``,
``Dnnl.destroy`` for primitives and descriptors. Memory objects never own tensor data: ``Memory.bind``
points them at a Paddle tensor's buffer for one execution, and the caller keeps that tensor alive until
``Dnnl.wait`` returns.
"""
import ctypes
import os

import paddle

from ppdet.utils.logger import setup_logger

logger = setup_logger(__name__)

__all__ = ['DnnlError', 'DnnlUnavailable', 'Dnnl', 'Memory', 'TESTED_VERSIONS', 'library', 'dims', 'F32',
           'PROP_FORWARD_TRAINING', 'CONVOLUTION_DIRECT', 'ARG_SRC', 'ARG_DST', 'ARG_WEIGHTS', 'ARG_DIFF_SRC',
           'ARG_DIFF_DST', 'ARG_DIFF_WEIGHTS']

# (major, minor) of the oneDNN builds the tests passed on (Paddle 3.3.1 ships oneDNN 3.6)
TESTED_VERSIONS = ((3, 6),)

# oneDNN 3.x C API values (oneapi/dnnl/dnnl_types.h, dnnl_common_types.h)
F32 = 3                      # dnnl_f32
FORMAT_ANY = 1               # dnnl_format_tag_any: the primitive picks its layout
ENGINE_CPU = 1               # dnnl_cpu
STREAM_IN_ORDER = 1          # dnnl_stream_in_order
PROP_FORWARD_TRAINING = 64   # dnnl_forward_training
CONVOLUTION_DIRECT = 1       # dnnl_convolution_direct
QUERY_EXEC_ARG_MD = 255      # dnnl_query_exec_arg_md
ARG_SRC, ARG_DST, ARG_WEIGHTS = 1, 17, 33
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS = 129, 145, 161
# dnnl_status_t
_STATUS = {1: 'out_of_memory', 2: 'invalid_arguments', 3: 'unimplemented', 4: 'last_impl_reached',
           5: 'runtime_error', 6: 'not_required'}
_MAX_NDIMS = 12
_Dims = ctypes.c_int64 * _MAX_NDIMS


class DnnlUnavailable(RuntimeError):
    """Paddle's oneDNN library cannot be used here; the message says why."""


class DnnlError(RuntimeError):
    """A oneDNN call returned an error status; the message names the call and the status."""


class _ExecArg(ctypes.Structure):
    """dnnl_exec_arg_t"""
    _fields_ = [('arg', ctypes.c_int), ('memory', ctypes.c_void_p)]


class _Version(ctypes.Structure):
    """dnnl_version_t (its hash and cpu_runtime fields follow; only these are read)"""
    _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int)]


# the C types of the signatures: handles are pointers, enums are C ints, dnnl_dims_t decays to int64_t*
_H, _OUT, _INT, _DIMS = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.POINTER(ctypes.c_int64)
_STATUS_T = ctypes.c_int
_SIGNATURES = {  # name: (restype, argtypes)
    'dnnl_version': (ctypes.POINTER(_Version), []),
    'dnnl_engine_create': (_STATUS_T, [_OUT, _INT, ctypes.c_size_t]),
    'dnnl_engine_destroy': (_STATUS_T, [_H]),
    'dnnl_stream_create': (_STATUS_T, [_OUT, _H, ctypes.c_uint]),
    'dnnl_stream_wait': (_STATUS_T, [_H]),
    'dnnl_stream_destroy': (_STATUS_T, [_H]),
    'dnnl_memory_desc_create_with_strides': (_STATUS_T, [_OUT, _INT, _DIMS, _INT, _DIMS]),
    'dnnl_memory_desc_create_with_tag': (_STATUS_T, [_OUT, _INT, _DIMS, _INT, _INT]),
    'dnnl_memory_desc_get_size': (ctypes.c_size_t, [_H]),
    'dnnl_memory_desc_equal': (_INT, [_H, _H]),
    'dnnl_memory_desc_destroy': (_STATUS_T, [_H]),
    'dnnl_memory_create': (_STATUS_T, [_OUT, _H, _H, _H]),
    'dnnl_memory_set_data_handle': (_STATUS_T, [_H, _H]),
    'dnnl_memory_destroy': (_STATUS_T, [_H]),
    'dnnl_primitive_desc_query_md': (_H, [_H, _INT, _INT]),
    'dnnl_primitive_desc_destroy': (_STATUS_T, [_H]),
    'dnnl_reorder_primitive_desc_create': (_STATUS_T, [_OUT, _H, _H, _H, _H, _H]),
    # (pd, engine, prop_kind, alg_kind, src, weights, bias, dst, strides, dilates, padding_l, padding_r, attr)
    'dnnl_convolution_forward_primitive_desc_create': (
        _STATUS_T, [_OUT, _H, _INT, _INT, _H, _H, _H, _H, _DIMS, _DIMS, _DIMS, _DIMS, _H]),
    # (pd, engine, alg_kind, diff_src, weights, diff_dst, strides, dilates, padding_l, padding_r, hint, attr)
    'dnnl_convolution_backward_data_primitive_desc_create': (
        _STATUS_T, [_OUT, _H, _INT, _H, _H, _H, _DIMS, _DIMS, _DIMS, _DIMS, _H, _H]),
    # (pd, engine, alg_kind, src, diff_weights, diff_bias, diff_dst, strides, dilates, padding_l, padding_r,
    #  hint, attr)
    'dnnl_convolution_backward_weights_primitive_desc_create': (
        _STATUS_T, [_OUT, _H, _INT, _H, _H, _H, _H, _DIMS, _DIMS, _DIMS, _DIMS, _H, _H]),
    'dnnl_primitive_create': (_STATUS_T, [_OUT, _H]),
    'dnnl_primitive_execute': (_STATUS_T, [_H, _H, _INT, ctypes.POINTER(_ExecArg)]),
    'dnnl_primitive_destroy': (_STATUS_T, [_H]),
}


def _declare(lib):
    """Set restype / argtypes of every function this module calls, so that ctypes converts and checks each
    argument instead of guessing (a Python int would otherwise be passed as a 32-bit C int)."""
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


def dims(values):
    """A ``dnnl_dims_t`` (int64[12]) holding `values`."""
    out = _Dims()
    for i, v in enumerate(values):
        out[i] = int(v)
    return out


class Dnnl(object):
    """The bound library with one CPU engine and one in-order stream (oneDNN threads: OpenMP, as Paddle's).

    Lives as long as the process (``library()``), so its engine and stream are never destroyed.
    """

    def __init__(self, lib):
        self.lib = lib
        self.engine = self.create('dnnl_engine_create', ENGINE_CPU, 0)
        self.stream = self.create('dnnl_stream_create', self.engine, STREAM_IN_ORDER)

    def check(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise DnnlError('oneDNN {} returned {}'.format(name, _STATUS.get(status, 'status {}'.format(status))))

    def create(self, name, *args):
        """Calls ``name(&handle, *args)`` (a ``dnnl_*_create``) and returns the new handle (a c_void_p)."""
        handle = ctypes.c_void_p()
        self.check(name, ctypes.byref(handle), *args)
        return handle

    def destroy(self, kind, *handles):
        """``dnnl_<kind>_destroy`` on each handle that is set ('memory_desc', 'primitive_desc', 'primitive')."""
        for handle in handles:
            if handle is not None and handle.value is not None:
                self.check('dnnl_{}_destroy'.format(kind), handle)

    def plain_desc(self, shape):
        """float32 memory descriptor of a contiguous row-major tensor (Paddle's NCHW / OIHW); the caller
        destroys it (``destroy('memory_desc', ...)``)."""
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        return self.create('dnnl_memory_desc_create_with_strides', len(shape), dims(shape), F32, dims(strides))

    def any_desc(self, shape):
        """float32 memory descriptor whose layout the primitive chooses; the caller destroys it."""
        return self.create('dnnl_memory_desc_create_with_tag', len(shape), dims(shape), F32, FORMAT_ANY)

    def query(self, primitive_desc, arg):
        """The memory descriptor a primitive descriptor chose for execution argument `arg` (owned by the
        primitive descriptor: valid until it is destroyed)."""
        return ctypes.c_void_p(self.lib.dnnl_primitive_desc_query_md(primitive_desc, QUERY_EXEC_ARG_MD, arg))

    def primitive(self, primitive_desc):
        """A primitive of `primitive_desc` (which the caller still destroys); the caller destroys the primitive."""
        return self.create('dnnl_primitive_create', primitive_desc)

    def reorder(self, src_desc, dst_desc):
        """A primitive copying memory of `src_desc` into the layout of `dst_desc`; the caller destroys it."""
        primitive_desc = self.create('dnnl_reorder_primitive_desc_create', src_desc, self.engine, dst_desc,
                                     self.engine, None)
        try:
            return self.primitive(primitive_desc)
        finally:
            self.destroy('primitive_desc', primitive_desc)

    def execute(self, primitive, args):
        """Queue `primitive` on the stream with [(ARG_*, Memory)]."""
        packed = (_ExecArg * len(args))(*[_ExecArg(arg, memory.handle) for arg, memory in args])
        self.check('dnnl_primitive_execute', primitive, self.stream, len(args), packed)

    def wait(self):
        self.check('dnnl_stream_wait', self.stream)

    def equal(self, desc_a, desc_b):
        return bool(self.lib.dnnl_memory_desc_equal(desc_a, desc_b))


class Memory(object):
    """A oneDNN memory object of one descriptor (copied: the descriptor may be destroyed after), pointed at a
    Paddle tensor's buffer per execution; ``close()`` destroys it."""

    def __init__(self, dnnl, desc):
        self.dnnl = dnnl
        self.handle = dnnl.create('dnnl_memory_create', desc, dnnl.engine, None)
        # bytes the layout needs (a blocked layout pads channels), rounded up to float32 elements
        self.numel = (dnnl.lib.dnnl_memory_desc_get_size(desc) + 3) // 4

    def bind(self, tensor):
        """Point this memory at `tensor` (contiguous float32 with at least `numel` elements); returns it."""
        self.dnnl.check('dnnl_memory_set_data_handle', self.handle, tensor.data_ptr())
        return tensor

    def close(self):
        self.dnnl.destroy('memory', self.handle)
        self.handle = ctypes.c_void_p()


_LIBRARY = []


def library():
    """The process's ``Dnnl`` (created on first use); raises ``DnnlUnavailable`` with the reason."""
    if _LIBRARY:
        return _LIBRARY[0]
    path = os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libdnnl.so.3')
    try:
        lib = ctypes.CDLL(path)
        _declare(lib)
    except (OSError, AttributeError) as e:
        raise DnnlUnavailable('no usable oneDNN library in this Paddle build ({})'.format(e)) from None
    version = lib.dnnl_version().contents
    if version.major != 3:
        raise DnnlUnavailable('{} is oneDNN {}.{}; these bindings use the 3.x C API'.format(
            path, version.major, version.minor))
    if (version.major, version.minor) not in TESTED_VERSIONS:
        logger.warning('{} is oneDNN {}.{}.{}, not among the versions these bindings were tested with ({}); '
                       'each model\'s first convolution is checked against Paddle\'s gradients before use'.format(
                           path, version.major, version.minor, version.patch,
                           ', '.join('{}.{}'.format(*v) for v in TESTED_VERSIONS)))
    _LIBRARY.append(Dnnl(lib))
    return _LIBRARY[0]
