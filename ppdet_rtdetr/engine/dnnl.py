"""The oneDNN library that ships inside the Paddle wheel (``paddle/libs/libdnnl.so.3``), reached through its C API.

Paddle Inference runs convolutions on oneDNN, but Paddle's dygraph does not: ``FLAGS_use_mkldnn`` leaves
dygraph convolutions on Paddle's im2col + GEMM kernels. This module gives Python the few oneDNN calls a
convolution gradient needs (``conv_grad.py``), with ctypes and no compiler: the wheel has the library but
not the headers, so the handful of constants below are the oneDNN 3.x C API's values (stable within major
version 3: Paddle 3.3.1 loads oneDNN 3.6; ``tests/engine/test_conv_grad.py`` checks the results against Paddle's
own gradients, which wrong values could not pass).

Contract: ``library()`` returns the bound library or raises ``DnnlUnavailable`` (a Paddle build without
oneDNN, another major version); every call that returns a non-zero ``dnnl_status_t`` raises ``DnnlError``
naming the call. Memory objects here never own tensor data: ``Memory.bind`` points them at a Paddle
tensor's buffer for one execution, and the caller keeps that tensor alive until ``Dnnl.wait`` returns.
"""
import ctypes
import os

import paddle

__all__ = ['DnnlError', 'DnnlUnavailable', 'Dnnl', 'Memory', 'library', 'dims', 'F32', 'PROP_FORWARD_TRAINING',
           'CONVOLUTION_DIRECT', 'ARG_SRC', 'ARG_DST', 'ARG_WEIGHTS', 'ARG_DIFF_SRC', 'ARG_DIFF_DST',
           'ARG_DIFF_WEIGHTS']

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
_VOID_P = ctypes.c_void_p


class DnnlUnavailable(RuntimeError):
    """Paddle's oneDNN library cannot be used here; the message says why."""


class DnnlError(RuntimeError):
    """A oneDNN call returned an error status; the message names the call and the status."""


class _ExecArg(ctypes.Structure):
    _fields_ = [('arg', ctypes.c_int), ('memory', _VOID_P)]


class _Version(ctypes.Structure):
    _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int)]


def dims(values):
    """A ``dnnl_dims_t`` (int64[12]) holding `values`."""
    out = _Dims()
    for i, v in enumerate(values):
        out[i] = int(v)
    return out


class Dnnl(object):
    """The bound library with one CPU engine and one in-order stream (oneDNN threads: OpenMP, as Paddle's)."""

    def __init__(self, lib):
        self.lib = lib
        lib.dnnl_primitive_desc_query_md.restype = _VOID_P
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        self.engine, self.stream = _VOID_P(), _VOID_P()
        self.check('dnnl_engine_create', ctypes.byref(self.engine), ENGINE_CPU, ctypes.c_size_t(0))
        self.check('dnnl_stream_create', ctypes.byref(self.stream), self.engine, ctypes.c_uint(STREAM_IN_ORDER))

    def check(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise DnnlError('oneDNN {} returned {}'.format(name, _STATUS.get(status, 'status {}'.format(status))))

    def create(self, name, *args):
        """Calls ``name(&handle, *args)`` (a ``dnnl_*_create``) and returns the new handle."""
        handle = _VOID_P()
        self.check(name, ctypes.byref(handle), *args)
        return handle

    def plain_desc(self, shape):
        """float32 memory descriptor of a contiguous row-major tensor (Paddle's NCHW / OIHW)."""
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        return self.create('dnnl_memory_desc_create_with_strides', len(shape), dims(shape), F32, dims(strides))

    def any_desc(self, shape):
        """float32 memory descriptor whose layout the primitive chooses."""
        return self.create('dnnl_memory_desc_create_with_tag', len(shape), dims(shape), F32, FORMAT_ANY)

    def query(self, primitive_desc, arg):
        """The memory descriptor a primitive descriptor chose for execution argument `arg`."""
        return _VOID_P(self.lib.dnnl_primitive_desc_query_md(primitive_desc, QUERY_EXEC_ARG_MD, arg))

    def primitive(self, primitive_desc):
        return self.create('dnnl_primitive_create', primitive_desc)

    def reorder(self, src_desc, dst_desc):
        """A primitive copying memory of `src_desc` into the layout of `dst_desc`."""
        return self.primitive(self.create('dnnl_reorder_primitive_desc_create', src_desc, self.engine, dst_desc,
                                          self.engine, None))

    def execute(self, primitive, args):
        """Queue `primitive` on the stream with [(ARG_*, Memory)]."""
        packed = (_ExecArg * len(args))(*[_ExecArg(arg, memory.handle) for arg, memory in args])
        self.check('dnnl_primitive_execute', primitive, self.stream, len(args), packed)

    def wait(self):
        self.check('dnnl_stream_wait', self.stream)


class Memory(object):
    """A oneDNN memory object of one descriptor, pointed at a Paddle tensor's buffer per execution."""

    def __init__(self, dnnl, desc):
        self.dnnl, self.desc = dnnl, desc
        self.handle = dnnl.create('dnnl_memory_create', desc, dnnl.engine, None)
        # bytes the layout needs (a blocked layout pads channels), rounded up to float32 elements
        self.numel = (dnnl.lib.dnnl_memory_desc_get_size(desc) + 3) // 4

    def bind(self, tensor):
        """Point this memory at `tensor` (contiguous float32 with at least `numel` elements); returns it."""
        self.dnnl.check('dnnl_memory_set_data_handle', self.handle, _VOID_P(tensor.data_ptr()))
        return tensor

    def same_layout(self, other_desc):
        return bool(self.dnnl.lib.dnnl_memory_desc_equal(self.desc, other_desc))


_LIBRARY = []


def library():
    """The process's ``Dnnl`` (created on first use); raises ``DnnlUnavailable`` with the reason."""
    if _LIBRARY:
        return _LIBRARY[0]
    path = os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libdnnl.so.3')
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise DnnlUnavailable('no oneDNN library in this Paddle build ({})'.format(e)) from None
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    version = lib.dnnl_version().contents
    if version.major != 3:
        raise DnnlUnavailable('{} is oneDNN {}.{}; these bindings use the 3.x C API'.format(
            path, version.major, version.minor))
    _LIBRARY.append(Dnnl(lib))
    return _LIBRARY[0]
