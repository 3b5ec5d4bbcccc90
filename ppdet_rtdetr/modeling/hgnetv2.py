"""PP-HGNetV2 backbone for RT-DETR-L / -X / -H and Mask-RT-DETR-S / -M / -L / -X / -H, with the parameter names
of ppdet's ``PPHGNetV2``.

paddledet 2.6.0 has no PP-HGNetV2, and newer PaddleDetection registers ``PPHGNetV2``, so this is our
own class under another registry name. Attribute names (``stem.stem2a.bn``, ``stages.2.downsample``,
``blocks.0.layers.3.conv1``, ``aggregation_squeeze_conv``, ``lab.scale``) equal the official ones, so
the official RT-DETR-L/X/H checkpoints load by name.

Architecture (PaddleDetection develop, ppdet/modeling/backbones/hgnet_v2.py):
stem (stride 4) -> 4 stages (strides 4, 8, 16, 32). A stage is an optional depthwise 3x3 stride-2
downsample (BN, no activation) followed by HG blocks. An HG block runs ``num_layers`` convs in a chain,
concatenates the block input with every intermediate output, and aggregates them with a 1x1 squeeze
conv (to out/2) and a 1x1 excitation conv (to out); every block but the first of a stage adds its input.
"""
from numbers import Integral
from typing import NamedTuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.nn.initializer import Constant, KaimingNormal
from paddle.regularizer import L2Decay

from ppdet.core.workspace import register, serializable
from ppdet.modeling.shape_spec import ShapeSpec

__all__ = ['RTDETRHGNetV2']


class _StageCfg(NamedTuple):
    in_ch: int
    mid_ch: int
    out_ch: int
    num_blocks: int
    downsample: bool
    light_block: bool
    kernel_size: int
    num_layers: int


# Copied as numbers from PaddleDetection's PPHGNetV2.arch_configs (develop, ppdet/modeling/backbones/
# hgnet_v2.py). All five are checked against the official (Mask-)RT-DETR state dicts' names and shapes.
_ARCH_CFG = {
    'S': ((3, 24, 32), (_StageCfg(32, 32, 64, 1, False, False, 3, 3),
                        _StageCfg(64, 48, 256, 1, True, False, 3, 3),
                        _StageCfg(256, 96, 512, 2, True, True, 5, 3),
                        _StageCfg(512, 192, 1024, 1, True, True, 5, 3))),
    'M': ((3, 24, 32), (_StageCfg(32, 32, 96, 1, False, False, 3, 4),
                        _StageCfg(96, 64, 384, 1, True, False, 3, 4),
                        _StageCfg(384, 128, 768, 3, True, True, 5, 4),
                        _StageCfg(768, 256, 1536, 1, True, True, 5, 4))),
    'L': ((3, 32, 48), (_StageCfg(48, 48, 128, 1, False, False, 3, 6),
                        _StageCfg(128, 96, 512, 1, True, False, 3, 6),
                        _StageCfg(512, 192, 1024, 3, True, True, 5, 6),
                        _StageCfg(1024, 384, 2048, 1, True, True, 5, 6))),
    'X': ((3, 32, 64), (_StageCfg(64, 64, 128, 1, False, False, 3, 6),
                        _StageCfg(128, 128, 512, 2, True, False, 3, 6),
                        _StageCfg(512, 256, 1024, 5, True, True, 5, 6),
                        _StageCfg(1024, 512, 2048, 2, True, True, 5, 6))),
    'H': ((3, 48, 96), (_StageCfg(96, 96, 192, 2, False, False, 3, 6),
                        _StageCfg(192, 192, 512, 3, True, False, 3, 6),
                        _StageCfg(512, 384, 1024, 6, True, True, 5, 6),
                        _StageCfg(1024, 768, 2048, 3, True, True, 5, 6))),
}
_STRIDES = (4, 8, 16, 32)

# The official LearnableAffineBlock trains at 1% of its stage's learning rate.
_LAB_LR_SCALE = 0.01

# Paddle's padding="SAME" for a 2x2 kernel at stride 1 pads 0 before and 1 after ([top, bottom, left,
# right]); written out so the asymmetry is visible.
_PAD_BOTTOM_RIGHT = [0, 1, 0, 1]


class _LayerCfg(NamedTuple):
    """What every conv of one stage (or of the stem) shares."""
    lr_mult: float
    use_lab: bool
    norm_type: str
    freeze_norm: bool


def _data_parallel_on_gpu():
    return paddle.is_compiled_with_cuda() and paddle.distributed.get_world_size() > 1


def _make_norm(channels, cfg):
    def attr():
        # trainable=False also sets stop_gradient on the parameter.
        return ParamAttr(learning_rate=0. if cfg.freeze_norm else cfg.lr_mult,
                         regularizer=L2Decay(0.), trainable=not cfg.freeze_norm)

    # A frozen BN uses its stored statistics, so there is nothing to synchronise (and SyncBatchNorm
    # has no use_global_stats); on CPU or one process SyncBatchNorm would only fail or do nothing.
    if cfg.norm_type == 'sync_bn' and not cfg.freeze_norm and _data_parallel_on_gpu():
        return nn.SyncBatchNorm(channels, weight_attr=attr(), bias_attr=attr())
    return nn.BatchNorm2D(channels, weight_attr=attr(), bias_attr=attr(),
                          use_global_stats=True if cfg.freeze_norm else None)


class _LearnableAffine(nn.Layer):
    """``scale * x + bias`` with one scalar each (scale starts at 1, bias at 0)."""

    def __init__(self, lr_mult):
        super().__init__()
        lr = lr_mult * _LAB_LR_SCALE
        self.scale = self.create_parameter([1], attr=ParamAttr(learning_rate=lr),
                                           default_initializer=Constant(1.))
        self.bias = self.create_parameter([1], attr=ParamAttr(learning_rate=lr),
                                          default_initializer=Constant(0.))

    def forward(self, x):
        return self.scale * x + self.bias


class _ConvBNAct(nn.Layer):
    """Conv (no bias) -> BN -> [ReLU -> [LearnableAffine if cfg.use_lab]].

    ``padding=None`` pads (k - 1) // 2 on every side; a list of 4 is [top, bottom, left, right].
    The affine block only exists after an activation, as in the official network.
    """

    def __init__(self, ch_in, ch_out, kernel_size, cfg, stride=1, groups=1, act=True, padding=None):
        super().__init__()
        self.conv = nn.Conv2D(
            ch_in, ch_out, kernel_size, stride=stride,
            padding=(kernel_size - 1) // 2 if padding is None else padding, groups=groups,
            weight_attr=ParamAttr(learning_rate=cfg.lr_mult, initializer=KaimingNormal()),
            bias_attr=False)
        self.bn = _make_norm(ch_out, cfg)
        self.act = act
        self.lab = _LearnableAffine(cfg.lr_mult) if act and cfg.use_lab else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.act:
            x = F.relu(x)
            if self.lab is not None:
                x = self.lab(x)
        return x


class _LightConvBNAct(nn.Layer):
    """1x1 conv to ``ch_out`` (no activation), then a k x k depthwise conv with activation."""

    def __init__(self, ch_in, ch_out, kernel_size, cfg):
        super().__init__()
        self.conv1 = _ConvBNAct(ch_in, ch_out, 1, cfg, act=False)
        self.conv2 = _ConvBNAct(ch_out, ch_out, kernel_size, cfg, groups=ch_out)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class _StemBlock(nn.Layer):
    """Stride-4 stem: 3x3/2 conv, then two branches at stride 2 (2x2 convs | 2x2 max pool) concatenated,
    a 3x3/2 conv and a 1x1 conv.

    Both branches pad one row/column at the bottom/right only (Paddle's "SAME" for a 2x2 kernel).
    The pool's padded cells are ignored, not zeros: this matters once LearnableAffine makes the
    input negative (the PyTorch port zero-pads instead).
    """

    def __init__(self, ch_in, ch_mid, ch_out, cfg):
        super().__init__()
        self.stem1 = _ConvBNAct(ch_in, ch_mid, 3, cfg, stride=2)
        self.stem2a = _ConvBNAct(ch_mid, ch_mid // 2, 2, cfg, padding=_PAD_BOTTOM_RIGHT)
        self.stem2b = _ConvBNAct(ch_mid // 2, ch_mid, 2, cfg, padding=_PAD_BOTTOM_RIGHT)
        self.stem3 = _ConvBNAct(ch_mid * 2, ch_mid, 3, cfg, stride=2)
        self.stem4 = _ConvBNAct(ch_mid, ch_out, 1, cfg)
        self.pool = nn.MaxPool2D(kernel_size=2, stride=1, padding=_PAD_BOTTOM_RIGHT, ceil_mode=True)

    def forward(self, x):
        x = self.stem1(x)
        x_conv = self.stem2b(self.stem2a(x))
        x_pool = self.pool(x)
        # pool first, as the official concat order: [b, m, h, w] x 2 -> [b, 2m, h, w]
        x = paddle.concat([x_pool, x_conv], axis=1)
        return self.stem4(self.stem3(x))


class _HGBlock(nn.Layer):
    """Chain of ``num_layers`` convs whose outputs are concatenated with the input and aggregated."""

    def __init__(self, ch_in, ch_mid, ch_out, kernel_size, num_layers, light_block, residual, cfg):
        super().__init__()
        self.residual = residual
        self.layers = nn.LayerList()
        for i in range(num_layers):
            layer_in = ch_in if i == 0 else ch_mid
            if light_block:
                self.layers.append(_LightConvBNAct(layer_in, ch_mid, kernel_size, cfg))
            else:
                self.layers.append(_ConvBNAct(layer_in, ch_mid, kernel_size, cfg))
        total = ch_in + num_layers * ch_mid
        self.aggregation_squeeze_conv = _ConvBNAct(total, ch_out // 2, 1, cfg)
        self.aggregation_excitation_conv = _ConvBNAct(ch_out // 2, ch_out, 1, cfg)

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats[-1]))
        # [b, c_in, h, w] + n x [b, c_mid, h, w] -> [b, c_in + n*c_mid, h, w]
        y = paddle.concat(feats, axis=1)
        y = self.aggregation_excitation_conv(self.aggregation_squeeze_conv(y))
        return y + x if self.residual else y


class _HGStage(nn.Layer):
    """Optional depthwise 3x3/2 downsample (BN, no activation), then ``num_blocks`` HG blocks."""

    def __init__(self, stage, cfg):
        super().__init__()
        if stage.downsample:
            self.downsample = _ConvBNAct(stage.in_ch, stage.in_ch, 3, cfg, stride=2,
                                         groups=stage.in_ch, act=False)
        else:
            self.downsample = None
        self.blocks = nn.Sequential(*[
            _HGBlock(stage.in_ch if i == 0 else stage.out_ch, stage.mid_ch, stage.out_ch,
                     stage.kernel_size, stage.num_layers, stage.light_block,
                     residual=i > 0, cfg=cfg)
            for i in range(stage.num_blocks)])

    def forward(self, x):
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


@register
@serializable
class RTDETRHGNetV2(nn.Layer):
    """PP-HGNetV2 backbone of (Mask-)RT-DETR (ppdet ``PPHGNetV2`` names and defaults).

    Stage configurations come from PaddleDetection develop, ppdet/modeling/backbones/hgnet_v2.py
    (``PPHGNetV2.arch_configs``); stem channels (in, mid, out) and per stage
    (in, mid, out, blocks, downsample, light, kernel):
        S: stem (3, 24, 32); (32, 32, 64, 1, no, no, 3), (64, 48, 256, 1, yes, no, 3),
           (256, 96, 512, 2, yes, yes, 5), (512, 192, 1024, 1, yes, yes, 5); 3 layers per HG block
        M: stem (3, 24, 32); (32, 32, 96, 1, no, no, 3), (96, 64, 384, 1, yes, no, 3),
           (384, 128, 768, 3, yes, yes, 5), (768, 256, 1536, 1, yes, yes, 5); 4 layers per HG block
        L: stem (3, 32, 48); (48, 48, 128, 1, no, no, 3), (128, 96, 512, 1, yes, no, 3),
           (512, 192, 1024, 3, yes, yes, 5), (1024, 384, 2048, 1, yes, yes, 5)
        X: stem (3, 32, 64); (64, 64, 128, 1, no, no, 3), (128, 128, 512, 2, yes, no, 3),
           (512, 256, 1024, 5, yes, yes, 5), (1024, 512, 2048, 2, yes, yes, 5)
        H: stem (3, 48, 96); (96, 96, 192, 2, no, no, 3), (192, 192, 512, 3, yes, no, 3),
           (512, 384, 1024, 6, yes, yes, 5), (1024, 768, 2048, 3, yes, yes, 5)
    Every HG block of L / X / H has 6 layers.

    Args:
        arch (str): 'S', 'M', 'L', 'X' or 'H'.
        use_lab (bool): add a LearnableAffine (scalar scale * x + bias, at 1% of the stage's learning
            rate) after every activation. The official RT-DETR configs leave it off.
        lr_mult_list (list[float]): 5 learning-rate multipliers, for the stem and stages 0..3; they
            apply to convs and unfrozen BN.
        return_idx (list[int] | int): stages (0..3) whose outputs are returned.
        freeze_stem_only (bool): with freeze_at >= 0, freeze only the stem.
        freeze_at (int): -1 trains everything; k >= 0 freezes the stem and, unless freeze_stem_only,
            stages 0..k (stop_gradient on their parameters).
        freeze_norm (bool): every BN uses its stored statistics, also in training, and its scale/shift
            are not trainable (learning_rate 0, stop_gradient).
        norm_type (str): 'bn' or 'sync_bn'. sync_bn is a plain BatchNorm2D unless training
            data-parallel on GPU with unfrozen norms.

    Returns:
        list[Tensor]: ``forward(inputs)`` takes ``inputs['image']`` of shape [b, 3, h, w] and returns
        one feature map per ``return_idx`` entry, [b, c_i, h_i, w_i] with strides s_i in
        (4, 8, 16, 32), h_i = ceil(h / s_i) (likewise w), and c_i = (64, 256, 512, 1024) for S,
        (96, 384, 768, 1536) for M, (128, 512, 1024, 2048) for L and X, (192, 512, 1024, 2048) for H.
        ``out_shape`` lists the same channels and strides as ShapeSpec.
    """

    def __init__(self,
                 arch='L',
                 use_lab=False,
                 lr_mult_list=(1.0, 1.0, 1.0, 1.0, 1.0),
                 return_idx=(1, 2, 3),
                 freeze_stem_only=True,
                 freeze_at=0,
                 freeze_norm=True,
                 norm_type='bn'):
        super().__init__()
        if arch not in _ARCH_CFG:
            raise ValueError('arch must be one of {}, got {!r}'.format(sorted(_ARCH_CFG), arch))
        if norm_type not in ('bn', 'sync_bn'):
            raise ValueError("norm_type must be 'bn' or 'sync_bn', got {!r}".format(norm_type))
        if len(lr_mult_list) != 5:
            raise ValueError('lr_mult_list must have 5 entries (stem + 4 stages), got {}'.format(
                len(lr_mult_list)))
        # Copy: ppdet's create() passes the live config list.
        return_idx = [return_idx] if isinstance(return_idx, Integral) else list(return_idx)
        if not all(0 <= i < len(_STRIDES) for i in return_idx):
            raise ValueError('return_idx entries must be in [0, 3], got {}'.format(return_idx))
        self.return_idx = return_idx

        stem_ch, stages = _ARCH_CFG[arch]
        cfgs = [_LayerCfg(float(lr), use_lab, norm_type, freeze_norm) for lr in lr_mult_list]
        self.stem = _StemBlock(*stem_ch, cfg=cfgs[0])
        self.stages = nn.LayerList([_HGStage(s, cfg) for s, cfg in zip(stages, cfgs[1:])])
        self._out_channels = [s.out_ch for s in stages]

        if freeze_at >= 0:
            frozen = [self.stem]
            if not freeze_stem_only:
                frozen += list(self.stages)[:freeze_at + 1]
            for layer in frozen:
                for p in layer.parameters():
                    p.stop_gradient = True

    @property
    def out_shape(self):
        return [ShapeSpec(channels=self._out_channels[i], stride=_STRIDES[i])
                for i in self.return_idx]

    def forward(self, inputs):
        x = self.stem(inputs['image'])
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
