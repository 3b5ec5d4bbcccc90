"""ResNet-vd backbone for RT-DETR, with the parameter names of ppdet's ``ResNet``.

paddledet 2.6.0's ``ResNet`` lacks ``freeze_stem_only`` (RT-DETR freezes the stem but trains every
stage), so this is our own class rather than a patch. The attribute names (``conv1.conv1_1``,
``res4.res4b22.branch2a``, ``short.conv``, ...) are kept equal to ppdet's, so official RT-DETR
checkpoints load by name.
"""
from numbers import Integral

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.regularizer import L2Decay

from ppdet.core.workspace import register, serializable
from ppdet.modeling.shape_spec import ShapeSpec

__all__ = ['RTDETRResNet']

# Blocks per stage (res2..res5).
_DEPTH_CFG = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
}


def _data_parallel_on_gpu():
    return paddle.is_compiled_with_cuda() and paddle.distributed.get_world_size() > 1


def _make_norm(ch, norm_type, norm_decay, freeze_norm, lr):
    norm_lr = 0. if freeze_norm else lr

    def attr():
        # trainable=False also sets stop_gradient on the parameter.
        return ParamAttr(learning_rate=norm_lr, regularizer=L2Decay(norm_decay),
                         trainable=not freeze_norm)

    # A frozen BN uses its stored statistics, so there is nothing to synchronise; and SyncBatchNorm
    # has no use_global_stats option.
    if norm_type == 'sync_bn' and not freeze_norm and _data_parallel_on_gpu():
        return nn.SyncBatchNorm(ch, weight_attr=attr(), bias_attr=attr())
    return nn.BatchNorm2D(ch, weight_attr=attr(), bias_attr=attr(),
                          use_global_stats=True if freeze_norm else None)


class _ConvNorm(nn.Layer):
    """Conv (no bias) -> BN -> optional ReLU; sublayers named ``conv`` and ``norm`` like ppdet's."""

    def __init__(self, ch_in, ch_out, kernel_size, stride, act=None, lr=1.0, **norm_cfg):
        super().__init__()
        self.conv = nn.Conv2D(ch_in, ch_out, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2,
                              weight_attr=ParamAttr(learning_rate=lr), bias_attr=False)
        self.norm = _make_norm(ch_out, lr=lr, **norm_cfg)
        self.act = act

    def forward(self, x):
        x = self.norm(self.conv(x))
        return F.relu(x) if self.act == 'relu' else x


def _make_shortcut(ch_in, ch_out, stride, variant, **conv_cfg):
    """Projection shortcut of a stage's first block.

    Variant 'd' downsamples with a 2x2 average pool before a stride-1 1x1 conv, so the projection
    sees every input pixel instead of one in four.
    """
    if variant == 'd' and stride == 2:
        short = nn.Sequential()
        short.add_sublayer('pool', nn.AvgPool2D(kernel_size=2, stride=2, padding=0, ceil_mode=True))
        short.add_sublayer('conv', _ConvNorm(ch_in, ch_out, 1, 1, **conv_cfg))
        return short
    return _ConvNorm(ch_in, ch_out, 1, stride, **conv_cfg)


class _BasicBlock(nn.Layer):
    """Two 3x3 convs plus a residual (ResNet-18/34); output has ``ch_out`` channels."""

    expansion = 1

    def __init__(self, ch_in, ch_out, stride, project, variant, **conv_cfg):
        super().__init__()
        self.short = _make_shortcut(ch_in, ch_out, stride, variant, **conv_cfg) if project else None
        self.branch2a = _ConvNorm(ch_in, ch_out, 3, stride, act='relu', **conv_cfg)
        self.branch2b = _ConvNorm(ch_out, ch_out, 3, 1, **conv_cfg)

    def forward(self, x):
        short = x if self.short is None else self.short(x)
        return F.relu(self.branch2b(self.branch2a(x)) + short)


class _BottleNeck(nn.Layer):
    """1x1 -> 3x3 -> 1x1 convs plus a residual (ResNet-50/101); output has ``4 * ch_out`` channels."""

    expansion = 4

    def __init__(self, ch_in, ch_out, stride, project, variant, **conv_cfg):
        super().__init__()
        # Variant 'a' strides in the first 1x1 conv; the others stride in the 3x3 conv.
        stride_1x1, stride_3x3 = (stride, 1) if variant == 'a' else (1, stride)
        ch_expand = ch_out * self.expansion
        self.short = _make_shortcut(ch_in, ch_expand, stride, variant, **conv_cfg) if project else None
        self.branch2a = _ConvNorm(ch_in, ch_out, 1, stride_1x1, act='relu', **conv_cfg)
        self.branch2b = _ConvNorm(ch_out, ch_out, 3, stride_3x3, act='relu', **conv_cfg)
        self.branch2c = _ConvNorm(ch_out, ch_expand, 1, 1, **conv_cfg)

    def forward(self, x):
        short = x if self.short is None else self.short(x)
        return F.relu(self.branch2c(self.branch2b(self.branch2a(x))) + short)


def _block_name(stage_num, count, i):
    # ppdet's NameAdapter: res4 of a deep net (more than 10 blocks) is res4a, res4b1, res4b2, ...
    if stage_num == 4 and count > 10:
        return 'res4a' if i == 0 else 'res4b{}'.format(i)
    return 'res{}{}'.format(stage_num, chr(ord('a') + i))


@register
@serializable
class RTDETRResNet(nn.Layer):
    """ResNet backbone (variant 'd' by default) as used by RT-DETR, with ppdet's parameter names.

    Args:
        depth (int): 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        variant (str): 'a' / 'b' (7x7 stem), 'c' (three 3x3 stem convs) or 'd' (3x3 stem and an
            average-pooled projection shortcut).
        ch_in (int): channels of the stem output.
        norm_type (str): 'bn' or 'sync_bn'. sync_bn is a plain BatchNorm2D unless training
            data-parallel on GPU with unfrozen norms.
        norm_decay (float): L2 weight decay of the BN scale and shift.
        freeze_norm (bool): BN uses its stored statistics and its scale/shift are not trainable
            (learning_rate 0, stop_gradient).
        freeze_at (int): -1 trains everything; k >= 0 freezes the stem and stages 0..k
            (stop_gradient on their parameters).
        freeze_stem_only (bool): with freeze_at >= 0, freeze only the stem.
        return_idx (list[int] | int): indices (0..num_stages-1) of the stages (res2..res5) to return.
        lr_mult_list (list[float]): learning-rate multipliers of the conv (and unfrozen BN) weights of
            res2..res5; the stem always uses 1.0.
        num_stages (int): number of stages to build, 1..4.
        width_mult (float): scales the stage widths (64, 128, 256, 512); 1.0 is the official network,
            smaller values give the light backbones of the CPU demo and tests.

    Returns:
        list[Tensor]: ``forward(inputs)`` takes ``inputs['image']`` of shape [b, 3, h, w] and returns
        one feature map per ``return_idx`` entry, [b, c_i, ceil(h / s_i), ceil(w / s_i)] with
        strides s_i in (4, 8, 16, 32) and channels c_i in (64, 128, 256, 512) * width_mult, times 4 for
        depth >= 50;
        ``out_shape`` lists the same channels and strides as ShapeSpec.
    """
    __shared__ = []

    def __init__(self,
                 depth=50,
                 variant='d',
                 ch_in=64,
                 norm_type='bn',
                 norm_decay=0.,
                 freeze_norm=True,
                 freeze_at=0,
                 freeze_stem_only=False,
                 return_idx=[0, 1, 2, 3],
                 lr_mult_list=[1.0, 1.0, 1.0, 1.0],
                 num_stages=4,
                 width_mult=1.0):
        super().__init__()
        if depth not in _DEPTH_CFG:
            raise ValueError('depth must be one of {}, got {}'.format(sorted(_DEPTH_CFG), depth))
        if variant not in ('a', 'b', 'c', 'd'):
            raise ValueError("variant must be 'a', 'b', 'c' or 'd', got {!r}".format(variant))
        if norm_type not in ('bn', 'sync_bn'):
            raise ValueError("norm_type must be 'bn' or 'sync_bn', got {!r}".format(norm_type))
        if not 1 <= num_stages <= 4:
            raise ValueError('num_stages must be in [1, 4], got {}'.format(num_stages))
        if len(lr_mult_list) != 4:
            raise ValueError('lr_mult_list must have 4 entries, got {}'.format(len(lr_mult_list)))
        # Copy: ppdet's create() passes the live config list.
        return_idx = [return_idx] if isinstance(return_idx, Integral) else list(return_idx)
        if max(return_idx) >= num_stages:
            raise ValueError('return_idx {} out of range for num_stages={}'.format(
                return_idx, num_stages))
        self.return_idx = return_idx

        norm_cfg = dict(norm_type=norm_type, norm_decay=norm_decay, freeze_norm=freeze_norm)
        if variant in ('c', 'd'):
            stem_def = [('conv1_1', 3, ch_in // 2, 3, 2),
                        ('conv1_2', ch_in // 2, ch_in // 2, 3, 1),
                        ('conv1_3', ch_in // 2, ch_in, 3, 1)]
        else:
            stem_def = [('conv1', 3, ch_in, 7, 2)]
        self.conv1 = nn.Sequential()
        for name, c_in, c_out, k, s in stem_def:
            self.conv1.add_sublayer(name, _ConvNorm(c_in, c_out, k, s, act='relu', **norm_cfg))

        block = _BottleNeck if depth >= 50 else _BasicBlock
        widths = [int(w * width_mult) for w in (64, 128, 256, 512)]
        self._out_channels = [w * block.expansion for w in widths]
        self._out_strides = [4, 8, 16, 32]

        self.res_layers = []
        ch = ch_in
        for i in range(num_stages):
            stage_num = i + 2
            count = _DEPTH_CFG[depth][i]
            stage = nn.Sequential()
            for j in range(count):
                # Only the first block of a stage projects; res2 keeps the stride-4 resolution
                # left by the stem and max pool.
                stage.add_sublayer(
                    _block_name(stage_num, count, j),
                    block(ch, widths[i], stride=2 if j == 0 and stage_num != 2 else 1,
                          project=j == 0, variant=variant, lr=lr_mult_list[i], **norm_cfg))
                ch = self._out_channels[i]
            self.res_layers.append(self.add_sublayer('res{}'.format(stage_num), stage))

        if freeze_at >= 0:
            frozen = [self.conv1]
            if not freeze_stem_only:
                frozen += self.res_layers[:freeze_at + 1]
            for layer in frozen:
                for p in layer.parameters():
                    p.stop_gradient = True

    @property
    def out_shape(self):
        return [ShapeSpec(channels=self._out_channels[i], stride=self._out_strides[i])
                for i in self.return_idx]

    def forward(self, inputs):
        x = self.conv1(inputs['image'])  # [b, 3, h, w] -> [b, ch_in, h/2, w/2]
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # -> [b, ch_in, h/4, w/4]
        outs = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
