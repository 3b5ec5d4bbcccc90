"""Native code, behind one boundary: everything of this project that runs outside Python and Paddle's own ops.

* ``onednn``: the C API of the oneDNN library inside the Paddle wheel, through ctypes (declared signatures,
  every handle destroyed by its owner), and ``conv_grad``: convolution gradients on it for CPU training, with
  a self-check against Paddle's gradients before a model uses them and a bounded primitive cache;
* ``cpu_ops`` (with ``ms_deform_attn_cpu.cc``): the deformable-attention sampling as one compiled Paddle
  operator for CPU exports (``export.cpu_fused_attention``), bit-equal to the pure-Paddle sampler, built per
  Paddle version.

Each native path has a pure-Paddle equivalent that stays the reference: a failure of the native one falls back to
it (with one warning) or refuses with a message naming the option that asked for it.
"""
