"""Building blocks shared by the encoder and the decoder.

Attribute names (`conv`, `bn`, `conv1`, `in_proj_weight`, `layers`, ...) are the official PaddleDetection
RT-DETR ones: they become state-dict keys, so official checkpoints load without renaming.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.regularizer import L2Decay

__all__ = ['get_activation', 'broadcast_multiply', 'ConvBNAct', 'RepVggBlock', 'CSPRepLayer', 'MLP',
           'MultiHeadAttention']


def broadcast_multiply(x, factor):
    """``x * factor`` for a `factor` of x's rank that broadcasts to x's shape.

    In dygraph on CPU the factor is tiled to x's shape first: Paddle's CPU elementwise kernels broadcast a
    leading or middle axis slowly (forward + backward: the encoder memory [2, 8400, 256] times its mask
    [1, 8400, 1] 122 -> 44 ms; sampled points [16, 32, 12, 500] times their weights [16, 1, 12, 500]
    58 -> 19 ms). Each product multiplies the same two floats, so the values are bit-equal, and so were the
    gradients in those cases (tile's gradient sums the copies as the broadcast's does). Static graphs (export)
    and other devices keep the broadcast, which their kernels fuse.
    """
    if paddle.in_dynamic_mode() and x.place.is_cpu_place():
        factor = factor.tile([size // part for size, part in zip(x.shape, factor.shape)])
    return x * factor


class _ExplicitSilu(nn.Layer):
    """x * sigmoid(x) as two plain ops: older TensorRT versions lack a fused SiLU/Swish plugin."""

    def forward(self, x):
        return x * F.sigmoid(x)


class _Silu(nn.Layer):
    """SiLU; an exported (static) graph writes it as swish(x, beta=1), the same function: Paddle Inference's
    oneDNN passes fuse swish into the convolution before it but not silu (measured on two 128-channel 3x3
    conv + BN + act at 80x80: 14.1 ms fused, 19.1 ms with silu). Training and dygraph eval keep silu, whose
    kernel rounds differently (1 ulp), so that they stay bit-equal to the official model."""

    def forward(self, x):
        return F.silu(x) if paddle.in_dynamic_mode() else F.swish(x)


def get_activation(name, trt=False):
    """Activation layer by name (`relu`, `silu`, `gelu`, `leaky_relu`, `hardswish`); None -> identity.

    trt=True computes the same function with TensorRT-friendly ops (SiLU as x * sigmoid(x)).
    """
    if name is None:
        return nn.Identity()
    table = {'relu': nn.ReLU, 'silu': _Silu, 'swish': _Silu, 'gelu': nn.GELU,
             'leaky_relu': nn.LeakyReLU, 'hardswish': nn.Hardswish}
    if name not in table:
        raise ValueError(f"unknown activation '{name}'; choose one of {sorted(table)}")
    if trt and name in ('silu', 'swish'):
        return _ExplicitSilu()
    return table[name]()


def _bn(channels):
    # norm affine parameters take no weight decay, as in the official recipe
    return nn.BatchNorm2D(channels, weight_attr=ParamAttr(regularizer=L2Decay(0.0)),
                          bias_attr=ParamAttr(regularizer=L2Decay(0.0)))


class ConvBNAct(nn.Layer):
    """Conv2D (no bias, 'same' padding for odd kernels) -> BatchNorm2D -> activation.

    Args:
        ch_in (int), ch_out (int): channels.
        kernel_size (int), stride (int): conv geometry; padding is (kernel_size - 1) // 2.
        act (str|None): activation name, see `get_activation`; trt (bool): TensorRT-friendly form.
    """

    def __init__(self, ch_in, ch_out, kernel_size=1, stride=1, act=None, trt=False):
        super().__init__()
        self.conv = nn.Conv2D(ch_in, ch_out, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              bias_attr=False)
        self.bn = _bn(ch_out)
        self.act = get_activation(act, trt)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepVggBlock(nn.Layer):
    """RepVGG block: act(bn(conv3x3(x)) + bn(conv1x1(x))), fusable into one 3x3 conv for deploy.

    `convert_to_deploy()` folds both branches and their BN statistics into a single biased 3x3 conv
    (`self.conv`); the fused block computes the same function in eval mode.
    """

    def __init__(self, ch_in, ch_out, act='relu', trt=False):
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvBNAct(ch_in, ch_out, 3, 1, act=None)
        self.conv2 = ConvBNAct(ch_in, ch_out, 1, 1, act=None)
        self.act = get_activation(act, trt)

    def forward(self, x):
        if hasattr(self, 'conv'):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def convert_to_deploy(self):
        """Replace the two branches by one equivalent 3x3 conv (eval-mode BN statistics)."""
        if hasattr(self, 'conv'):
            return
        k3, b3 = _fuse_conv_bn(self.conv1)
        k1, b1 = _fuse_conv_bn(self.conv2)
        # a 1x1 kernel is a 3x3 kernel with zeros around its centre
        kernel = k3 + F.pad(k1, [1, 1, 1, 1])
        self.conv = nn.Conv2D(self.ch_in, self.ch_out, 3, 1, padding=1)
        self.conv.weight.set_value(kernel)
        self.conv.bias.set_value(b3 + b1)
        del self.conv1, self.conv2


def _fuse_conv_bn(branch):
    """(kernel, bias) of conv followed by eval-mode BN: w * g / std, beta - mean * g / std."""
    bn = branch.bn
    std = (bn._variance + bn._epsilon).sqrt()
    scale = bn.weight / std
    return branch.conv.weight * scale.reshape([-1, 1, 1, 1]), bn.bias - bn._mean * scale


class CSPRepLayer(nn.Layer):
    """CSP layer of the CCFM fusion: conv3(bottlenecks(conv1(x)) + conv2(x)).

    Args:
        ch_in (int), ch_out (int): channels.
        num_blocks (int): RepVGG blocks in the main branch.
        expansion (float): hidden channels = int(ch_out * expansion); conv3 is an identity when equal to ch_out.
        act (str): activation of the 1x1 convs and RepVGG blocks; trt (bool): TensorRT-friendly form.
    """

    def __init__(self, ch_in, ch_out, num_blocks=3, expansion=1.0, act='silu', trt=False):
        super().__init__()
        hidden = int(ch_out * expansion)
        self.conv1 = ConvBNAct(ch_in, hidden, 1, 1, act, trt)
        self.conv2 = ConvBNAct(ch_in, hidden, 1, 1, act, trt)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act, trt) for _ in range(num_blocks)])
        self.conv3 = ConvBNAct(hidden, ch_out, 1, 1, act, trt) if hidden != ch_out else nn.Identity()

    def forward(self, x):
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class MLP(nn.Layer):
    """`num_layers` Linear layers with ReLU between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim (int): widths; num_layers (int) >= 1.
    """

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.LayerList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiHeadAttention(nn.Layer):
    """Multi-head attention with a packed input projection (`in_proj_weight` [c, 3c], as ppdet's layer).

    Args:
        embed_dim (int): c. num_heads (int): nh, must divide c. dropout (float): on attention weights.

    forward(query [b, lq, c], key [b, lk, c], value [b, lk, c], attn_mask None or float [lq, lk] / [b, nh, lq, lk]
    added to the logits, e.g. 0 / -inf) -> [b, lq, c].
    """

    def __init__(self, embed_dim, num_heads, dropout=0.):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = self.create_parameter(
            [embed_dim, 3 * embed_dim], default_initializer=nn.initializer.XavierUniform())
        self.in_proj_bias = self.create_parameter(
            [3 * embed_dim], is_bias=True, default_initializer=nn.initializer.Constant(0.))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _project(self, x, i):
        c = self.embed_dim
        x = F.linear(x, self.in_proj_weight[:, i * c:(i + 1) * c], self.in_proj_bias[i * c:(i + 1) * c])
        # [b, l, c] -> [b, nh, l, c / nh]
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, query, key, value, attn_mask=None):
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        logits = paddle.matmul(q, k, transpose_y=True) * (self.head_dim ** -0.5)  # [b, nh, lq, lk]
        if attn_mask is not None:
            logits = logits + attn_mask
        out = paddle.matmul(self.dropout(F.softmax(logits, axis=-1)), v)
        # [b, nh, lq, c / nh] -> [b, lq, c]
        out = out.transpose([0, 2, 1, 3]).reshape([0, 0, self.embed_dim])
        return self.out_proj(out)
