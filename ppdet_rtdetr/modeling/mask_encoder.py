"""Hybrid encoder of Mask-RT-DETR: RT-DETR's encoder on strides 8-32 plus a mask-feature branch at stride 4.

The official ``MaskHybridEncoder`` (PaddleDetection develop, ppdet/modeling/transformers/hybrid_encoder.py) takes
four backbone levels (strides 4, 8, 16, 32): the last three go through RT-DETR's hybrid encoder unchanged, and the
finest one only joins the mask branch. The mask branch is a small semantic-FPN (``mask_feat_head``: per level, 3x3
convs each followed by a 2x bilinear upsample until stride 8, summed, one 3x3 conv), upsampled 2x to stride 4, plus
a 3x3 lateral conv of the stride-4 backbone map, then a 3x3 conv and a 1x1 conv to ``num_prototypes`` channels:
the mask prototypes that the transformer's mask queries are multiplied with. Attribute names equal the official
ones, so the official checkpoints load by name.
"""
import math

import paddle.nn as nn
import paddle.nn.functional as F
from ppdet.core.workspace import register, serializable

from .hybrid_encoder import RTDETRHybridEncoder
from .layers import ConvBNAct

__all__ = ['RTDETRMaskHybridEncoder']


class _MaskFeatFPN(nn.Layer):
    """Semantic-FPN of the encoder outputs to one stride-8 map of ``out_channels``.

    Level i (stride s_i) gets max(1, log2(s_i / s_0)) 3x3 conv + SiLU blocks, each followed by a 2x bilinear
    upsample (align_corners=False) unless the level is the finest; the levels are summed after resizing to the
    finest map's size (bilinear), then one 3x3 conv. Names: ``scale_heads.{i}.{2k}.0`` is the k-th conv of level i
    (the odd indices are the parameter-free upsamples), ``output_conv``.
    """

    def __init__(self, in_channels, fpn_strides, feat_channels, out_channels, act='silu', trt=False):
        super().__init__()
        if min(fpn_strides) != fpn_strides[0]:
            raise ValueError(f'mask feature FPN: the first level must be the finest, got strides {fpn_strides}')
        self.scale_heads = nn.LayerList()
        for ch, stride in zip(in_channels, fpn_strides):
            blocks = []
            for k in range(max(1, int(math.log2(stride) - math.log2(fpn_strides[0])))):
                # each conv is wrapped in a Sequential: the official names carry that extra `.0`
                blocks.append(nn.Sequential(ConvBNAct(ch if k == 0 else feat_channels, feat_channels, 3, 1, act, trt)))
                if stride != fpn_strides[0]:
                    blocks.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.output_conv = ConvBNAct(feat_channels, out_channels, 3, 1, act, trt)

    def forward(self, feats):
        out = self.scale_heads[0](feats[0])
        for head, feat in zip(self.scale_heads[1:], feats[1:]):
            out = out + F.interpolate(head(feat), size=out.shape[2:], mode='bilinear', align_corners=False)
        return self.output_conv(out)


@register
@serializable
class RTDETRMaskHybridEncoder(RTDETRHybridEncoder):
    """Mask-RT-DETR hybrid encoder (the official ``MaskHybridEncoder``'s names, options and numbers).

    Args:
        in_channels (list[int]): channels of the four backbone levels, the stride-4 one first (from `out_shape`).
        feat_strides (list[int]): their strides; the first must be 4.
        hidden_dim (int): c, channels of the three encoder outputs.
        use_encoder_idx (list[int]): levels that get AIFI, counted over the *four* input levels as the official
            configs do (S / M: [2], stride 16; L / X / H: [3], stride 32).
        num_encoder_layers, encoder_layer, pe_temperature, expansion, depth_mult, act, trt, eval_size: as
            `RTDETRHybridEncoder` (on the three coarser levels).
        num_prototypes (int): m, channels of the mask prototypes (shared with the transformer's mask query head).
        mask_feat_channels (list[int]): [FPN conv channels, mask branch channels] (official: [64, 64] by default;
            S [64, 32], X [128, 128], H [256, 128]).

    forward(feats: list of 4 maps [b, c_i, h_i, w_i], strides 4, 8, 16, 32) -> (enc_feats: list of 3 maps
    [b, c, h_i, w_i] at strides 8, 16, 32; mask_feat [b, m, h_0, w_0] at stride 4). The input list is not modified
    (the official forward pops its first entry). ``out_shape`` lists the three encoder levels.
    """
    __shared__ = ['hidden_dim', 'eval_size', 'trt', 'num_prototypes']

    def __init__(self, in_channels=[256, 512, 1024, 2048], feat_strides=[4, 8, 16, 32], hidden_dim=256,
                 use_encoder_idx=[3], num_encoder_layers=1, encoder_layer=None, num_prototypes=32,
                 pe_temperature=10000., expansion=1.0, depth_mult=1.0, mask_feat_channels=[64, 64], act='silu',
                 trt=False, eval_size=None):
        if len(in_channels) != len(feat_strides) or len(in_channels) < 2 or feat_strides[0] != 4:
            raise ValueError(f'RTDETRMaskHybridEncoder needs the stride-4 level first and as many channels as '
                             f'strides: in_channels={list(in_channels)}, feat_strides={list(feat_strides)}')
        if 0 in use_encoder_idx:
            raise ValueError(f'use_encoder_idx={list(use_encoder_idx)}: level 0 (stride 4) only feeds the mask '
                             f'branch, it cannot get the AIFI transformer')
        if len(mask_feat_channels) != 2:
            raise ValueError(f'mask_feat_channels must be [fpn channels, mask channels], got {mask_feat_channels}')
        super().__init__(in_channels=list(in_channels)[1:], feat_strides=list(feat_strides)[1:],
                         hidden_dim=hidden_dim, use_encoder_idx=[i - 1 for i in use_encoder_idx],
                         num_encoder_layers=num_encoder_layers, encoder_layer=encoder_layer,
                         pe_temperature=pe_temperature, expansion=expansion, depth_mult=depth_mult, act=act, trt=trt,
                         eval_size=eval_size)
        fpn_ch, mask_ch = mask_feat_channels
        self.num_prototypes = num_prototypes
        self.mask_feat_head = _MaskFeatFPN([hidden_dim] * len(self.feat_strides), self.feat_strides, fpn_ch, mask_ch,
                                           act, trt)
        self.enc_mask_lateral = ConvBNAct(in_channels[0], mask_ch, 3, 1, act, trt)
        self.enc_mask_output = nn.Sequential(ConvBNAct(mask_ch, mask_ch, 3, 1, act, trt),
                                             nn.Conv2D(mask_ch, num_prototypes, 1))

    def forward(self, feats, for_mot=False):
        x4 = feats[0]
        enc_feats = super().forward(list(feats[1:]))
        mask_feat = self.mask_feat_head(enc_feats)
        # stride 8 -> stride 4. The official code upsamples by a factor 2, which fails on an input whose size is not
        # a multiple of 8 (then 2 * h_8 != h_4); resizing to the stride-4 map's size is the same op where it works
        mask_feat = F.interpolate(mask_feat, size=x4.shape[2:], mode='bilinear', align_corners=False)
        mask_feat = mask_feat + self.enc_mask_lateral(x4)
        return enc_feats, self.enc_mask_output(mask_feat)
