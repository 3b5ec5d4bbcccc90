"""Hybrid encoder of RT-DETR: AIFI (intra-scale attention on the top level) + CCFM (cross-scale fusion)."""
import paddle
import paddle.nn as nn
from paddle import ParamAttr
from paddle.regularizer import L2Decay
from ppdet.core.workspace import register, serializable
from ppdet.modeling.shape_spec import ShapeSpec

from .layers import ConvBNAct, CSPRepLayer, MultiHeadAttention, get_activation

__all__ = ['RTDETRHybridEncoder', 'sincos_position_embedding', 'upsample_nearest']


def sincos_position_embedding(h, w, embed_dim=256, temperature=10000., dtype='float32'):
    """2-D sin-cos position embedding of an h x w grid, [1, h*w, embed_dim], row-major tokens.

    Token (r, c) gets [sin(r*f), cos(r*f), sin(c*f), cos(c*f)] with f = temperature^(-i / (embed_dim/4)).
    The official code meshgrids (w, h) with 'ij' indexing and flattens that, which on a square grid gives
    exactly this layout (the row index in the first half); we build it in token order so that a non-square
    grid gets a coherent embedding instead of a scrambled one, and square grids keep the official numbers.
    """
    if embed_dim % 4:
        raise ValueError(f'embed_dim {embed_dim} must be divisible by 4 for the 2-D sin-cos embedding')
    pos_dim = embed_dim // 4
    omega = 1. / temperature ** (paddle.arange(pos_dim, dtype=dtype) / pos_dim)
    rows = paddle.arange(h, dtype=dtype).unsqueeze(1).expand([h, w]).flatten()  # [h*w]
    cols = paddle.arange(w, dtype=dtype).unsqueeze(0).expand([h, w]).flatten()
    rows, cols, omega = rows.unsqueeze(1), cols.unsqueeze(1), omega.unsqueeze(0)  # [h*w, 1], [1, pos_dim]
    # sin and cos each take their own product (omega * x is the same number as x * omega): Paddle Inference
    # with oneDNN runs sin in place on its input, so a product shared with cos reached cos as sin(product)
    # (errors up to 2 when an export for any size computes this in the graph instead of baking it)
    emb = paddle.concat([(rows * omega).sin(), (omega * rows).cos(), (cols * omega).sin(), (omega * cols).cos()],
                        axis=1)  # [h*w, embed_dim]
    return emb.unsqueeze(0)


def _repeat_pixels(x, times_h, times_w):
    """[b, c, h, w] -> [b, c, h * times_h, w * times_w], every pixel repeated: copies only, for any sizes.

    A static graph (the export) repeats in NHWC order. Paddle Inference's oneDNN convolutions leave their outputs
    in NHWC memory, and its stack writes plain NCHW: stacking in NCHW order made one oneDNN copy transpose and
    interleave at once (R18vd at 640: 6.1 ms for 256x40x40), where NHWC order copies whole channel vectors
    (0.2-0.5 ms) and transposes once at the end (0.6 ms). Dygraph keeps the NCHW stacks (its gradients as
    before).
    """
    if paddle.in_dynamic_mode():
        # [b, c, h, w] -> [b, c, h, w, times_w] -> [b, c, h, w * times_w]
        x = paddle.stack([x] * times_w, axis=-1).flatten(3, 4)
        # [b, c, h, W] -> [b, c, h, times_h, W] -> [b, c, h * times_h, W]
        return paddle.stack([x] * times_h, axis=3).flatten(2, 3)
    # [b, c, h, w] -> [b, h, w, c] -> [b, h, w, times_w, c] -> [b, h, W, c]
    x = paddle.stack([x.transpose([0, 2, 3, 1])] * times_w, axis=3).flatten(2, 3)
    # [b, h, W, c] -> [b, h, times_h, W, c] -> [b, H, W, c] -> [b, c, H, W]
    return paddle.stack([x] * times_h, axis=2).flatten(1, 2).transpose([0, 3, 1, 2])


def upsample_nearest(x, size):
    """Nearest-neighbour resize of [b, c, h, w] to size (H, W), as F.interpolate(mode='nearest').

    Not the `nearest_interp` op: Paddle 3.3 Inference with oneDNN fails on that op's PIR `scale` attribute
    ("ConvertPirAttribute2RuntimeAttribute not support pir::ArrayAttribute<pir::DoubleAttribute>").
    An integer factor (RT-DETR's 2x between levels) repeats every pixel by stacking copies: no index arithmetic
    in the exported graph (ONNX had Cast / Mul / Floor / Max around gathers), a plain sum as the backward, and
    a Concat in ONNX, which onnxruntime runs 2.5x faster than the Tile of an earlier form (4.1 against 1.6 ms
    at 256x40x40; Paddle Inference runs both alike). Other known sizes take two index gathers with
    F.interpolate's source index floor(i * h / H).

    Sizes not known at trace time (a dynamic-size export) must be those of the level one stride-2 convolution
    finer than x, i.e. H in {2h - 1, 2h} (and W alike), as between the encoder's levels: every pixel is repeated
    twice and the result cropped to (H, W), which is what the source index gives for those sizes. (Gathers
    would serve any size, but Paddle Inference's index_select took 22 ms of a 450 ms R18vd run at 640, where
    the copies take 7-10.)
    """
    h, w = x.shape[2:]
    # an export for any input size traces the sizes as shape tensors (or -1): only Python ints are known
    known = all(isinstance(v, int) and v > 0 for v in (h, w, size[0], size[1]))
    if known and size[0] % h == 0 and size[1] % w == 0:
        return _repeat_pixels(x, size[0] // h, size[1] // w)
    if known:
        rows = paddle.arange(size[0]) * h // size[0]
        cols = paddle.arange(size[1]) * w // size[1]
        return paddle.index_select(paddle.index_select(x, rows, axis=2), cols, axis=3)
    return _repeat_pixels(x, 2, 2)[:, :, :size[0], :size[1]]


class TransformerEncoderLayer(nn.Layer):
    """Post-norm transformer encoder layer (AIFI): self-attention with position embedding on q/k, then FFN."""

    def __init__(self, d_model=256, nhead=8, dim_feedforward=1024, dropout=0., activation='gelu'):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activation = get_activation(activation)

    def forward(self, src, pos_embed):
        q = k = src + pos_embed
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src)))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class _EncoderStack(nn.Layer):
    """`num_layers` encoder layers; keeps the official `encoder.{i}.layers.{j}` state-dict names."""

    def __init__(self, num_layers, **layer_cfg):
        super().__init__()
        self.layers = nn.LayerList([TransformerEncoderLayer(**layer_cfg) for _ in range(num_layers)])

    def forward(self, src, pos_embed):
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src


@register
@serializable
class RTDETRHybridEncoder(nn.Layer):
    """RT-DETR hybrid encoder (neck): AIFI on chosen levels, then top-down and bottom-up CCFM fusion.

    Args:
        in_channels (list[int]): channels of the backbone levels (from `out_shape`).
        feat_strides (list[int]): their strides.
        hidden_dim (int): c, channels of every output level.
        use_encoder_idx (list[int]): levels that get the AIFI transformer (official: the last, [2]).
        num_encoder_layers (int): AIFI layers per chosen level; 0 disables AIFI.
        encoder_layer (dict): `TransformerEncoderLayer` options (nhead, dim_feedforward, dropout, activation);
            `d_model` is always hidden_dim.
        pe_temperature (float): sin-cos position embedding temperature.
        expansion (float): CSPRepLayer hidden-channel ratio (R18/R34: 0.5, R50/R101: 1.0).
        depth_mult (float): RepVGG blocks per CSPRepLayer = round(3 * depth_mult).
        act (str): activation of the CCFM convs.
        trt (bool): compute the activations with TensorRT-friendly ops (same function, see `get_activation`).
        eval_size (list[int]|None): [h, w] of eval/export inputs; when set the position embeddings of those
            sizes are precomputed as non-persistable buffers (out of checkpoints, follow `.to()`).

    Inputs: list of nl feature maps [b, c_i, h_i, w_i]. Returns: list of nl maps [b, hidden_dim, h_i, w_i].
    """
    __shared__ = ['hidden_dim', 'eval_size', 'trt']

    def __init__(self, in_channels=[512, 1024, 2048], feat_strides=[8, 16, 32], hidden_dim=256,
                 use_encoder_idx=[2], num_encoder_layers=1, encoder_layer=None, pe_temperature=10000.,
                 expansion=1.0, depth_mult=1.0, act='silu', trt=False, eval_size=None):
        super().__init__()
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.eval_size = list(eval_size) if eval_size else None
        self._lateral_first = False  # set by convert_to_deploy

        self.input_proj = nn.LayerList([
            nn.Sequential(nn.Conv2D(c, hidden_dim, 1, bias_attr=False),
                          nn.BatchNorm2D(hidden_dim, weight_attr=ParamAttr(regularizer=L2Decay(0.0)),
                                         bias_attr=ParamAttr(regularizer=L2Decay(0.0))))
            for c in self.in_channels])
        layer_cfg = dict(encoder_layer or {})
        layer_cfg.pop('name', None)  # official configs name the layer class; ours is fixed
        layer_cfg['d_model'] = hidden_dim
        self.encoder = nn.LayerList([_EncoderStack(num_encoder_layers, **layer_cfg)
                                     for _ in self.use_encoder_idx])

        n = len(self.in_channels)
        num_blocks = round(3 * depth_mult)
        self.lateral_convs = nn.LayerList([ConvBNAct(hidden_dim, hidden_dim, 1, 1, act, trt) for _ in range(n - 1)])
        self.fpn_blocks = nn.LayerList([CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, expansion, act, trt)
                                        for _ in range(n - 1)])
        self.downsample_convs = nn.LayerList([ConvBNAct(hidden_dim, hidden_dim, 3, 2, act, trt)
                                              for _ in range(n - 1)])
        self.pan_blocks = nn.LayerList([CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, expansion, act, trt)
                                        for _ in range(n - 1)])
        # (h, w) of each precomputed embedding: matched on both, since a transposed grid has the same token count
        self._pos_embed_hw = {}
        if self.eval_size:
            for idx in self.use_encoder_idx:
                s = self.feat_strides[idx]
                self._pos_embed_hw[idx] = (self.eval_size[0] // s, self.eval_size[1] // s)
                pe = sincos_position_embedding(*self._pos_embed_hw[idx], hidden_dim, pe_temperature)
                self.register_buffer(f'pos_embed{idx}', pe, persistable=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {'in_channels': [s.channels for s in input_shape],
                'feat_strides': [s.stride for s in input_shape]}

    def _pos_embed(self, idx, h, w):
        """[1, h*w, c] embedding of an h x w map: the buffer of `eval_size` when (h, w) is its grid, else computed.

        h and w are ints, or 0-D int tensors when a dynamic-size export traces this (the graph then computes the
        embedding from the input's shape).
        """
        cached = getattr(self, f'pos_embed{idx}', None)
        known = isinstance(h, int) and isinstance(w, int)
        if self.training or cached is None or not known or self._pos_embed_hw[idx] != (h, w):
            return sincos_position_embedding(h, w, self.hidden_dim, self.pe_temperature)
        return cached

    def forward(self, feats, for_mot=False):
        if len(feats) != len(self.in_channels):
            raise ValueError(f'RTDETRHybridEncoder expects {len(self.in_channels)} feature levels, '
                             f'got {len(feats)}')
        proj = [self.input_proj[i](f) for i, f in enumerate(feats)]
        for i, idx in enumerate(self.use_encoder_idx):
            h, w = proj[idx].shape[2:]
            # [b, c, h, w] -> [b, h*w, c]
            src = proj[idx].flatten(2).transpose([0, 2, 1])
            memory = self.encoder[i](src, self._pos_embed(idx, h, w))
            # [b, h*w, c] -> [b, c, h, w]
            proj[idx] = memory.transpose([0, 2, 1]).reshape([-1, self.hidden_dim, h, w])

        # top-down (FPN): inner[0] is always the coarsest fused map so far
        n = len(self.in_channels)
        inner = [proj[-1]]
        for k, idx in enumerate(range(n - 1, 0, -1)):
            high = self.lateral_convs[k](inner[0])
            inner[0] = high
            up = upsample_nearest(high, proj[idx - 1].shape[2:])
            pair = [proj[idx - 1], up] if self._lateral_first else [up, proj[idx - 1]]
            inner.insert(0, self.fpn_blocks[k](paddle.concat(pair, axis=1)))

        # bottom-up (PAN)
        outs = [inner[0]]
        for k in range(n - 1):
            down = self.downsample_convs[k](outs[-1])
            outs.append(self.pan_blocks[k](paddle.concat([down, inner[k + 1]], axis=1)))
        return outs

    @paddle.no_grad()
    def convert_to_deploy(self):
        """Deploy form of the top-down fusion (the same function): each concat takes the lateral map first, and
        the input channels of the fusion block's two 1x1 convs are swapped to match.

        Why: Paddle Inference's oneDNN concat writes the layout of its first input. The lateral map comes out of a
        convolution in oneDNN's NHWC memory, the upsampled map out of plain NCHW copies; with the upsampled map
        first the concat wrote NCHW and both 1x1 convs reordered it back (R18vd at 640: 2 x 2.3 ms for
        512x80x80). The parameters keep their names and shapes, only their input-channel halves trade places: call
        this on a model being exported, not on one whose state dict is saved as a checkpoint.
        """
        if self._lateral_first:
            return
        c = self.hidden_dim  # input channels [upsampled | lateral] -> [lateral | upsampled]
        for block in self.fpn_blocks:
            for conv in (block.conv1.conv, block.conv2.conv):
                conv.weight.set_value(paddle.concat([conv.weight[:, c:], conv.weight[:, :c]], axis=1))
        self._lateral_first = True

    @property
    def out_shape(self):
        return [ShapeSpec(channels=self.hidden_dim, stride=s) for s in self.feat_strides]
