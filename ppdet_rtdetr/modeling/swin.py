"""paddledet 2.6.0's SwinTransformer with the official RT-DETR options `arch` and a clear download error.

PaddleDetection develop keeps each window attention's `relative_position_index` out of the state dict
(2.6.0 saves it); it is a constant of the window size, so here it is a non-persistable buffer too and the
layout equals the official RT-DETR Swin-L checkpoint's.
"""
from ppdet.core.workspace import register
from ppdet.modeling.backbones.swin_transformer import SwinTransformer

from .pretrained import load_backbone_pretrained

__all__ = ['RTDETRSwinTransformer', 'SWIN_ARCHS']

_URL = 'https://bj.bcebos.com/v1/paddledet/models/pretrained/swin_{}_patch4_window{}_{}_22kto1k_pretrained.pdparams'


def _arch(size, embed_dim, depths, num_heads, window_size, name):
    return dict(pretrain_img_size=size, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                window_size=window_size, pretrained=_URL.format(name, window_size, size))


# PaddleDetection develop's `arch` names: sizes and ImageNet-22k->1k weights
SWIN_ARCHS = {
    'swin_T_224': _arch(224, 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 'tiny'),
    'swin_S_224': _arch(224, 96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 'small'),
    'swin_B_224': _arch(224, 128, [2, 2, 18, 2], [4, 8, 16, 32], 7, 'base'),
    'swin_L_224': _arch(224, 192, [2, 2, 18, 2], [6, 12, 24, 48], 7, 'large'),
    'swin_B_384': _arch(384, 128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 'base'),
    'swin_L_384': _arch(384, 192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 'large'),
}


@register
class RTDETRSwinTransformer(SwinTransformer):
    """ppdet 2.6.0's SwinTransformer (same layers and names; `relative_position_index` not saved, as officially)
    plus the official `arch` option.

    Args:
        arch (str|None): one of SWIN_ARCHS (e.g. 'swin_L_384'); as in PaddleDetection, it sets
            pretrain_img_size, embed_dim, depths, num_heads and window_size (overriding those options) and
            the default `pretrained` URL. None: the explicit options, no default weights.
        pretrained (str|None): ImageNet weights, URL or file; '' builds without them; None: the arch's URL.
        Other options: as paddledet 2.6.0's SwinTransformer.

    Raises RuntimeError naming the URL and `SwinTransformer.pretrained` when the download fails.
    """

    def __init__(self, arch=None, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=[2, 2, 6, 2],
                 num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.2, ape=False, patch_norm=True, out_indices=(0, 1, 2, 3),
                 frozen_stages=-1, pretrained=None):
        if arch is not None:
            if arch not in SWIN_ARCHS:
                raise ValueError(f'SwinTransformer.arch {arch!r} is not one of {sorted(SWIN_ARCHS)}')
            sizes = dict(SWIN_ARCHS[arch])
            default_url = sizes.pop('pretrained')
            pretrain_img_size, embed_dim, depths, num_heads, window_size = (
                sizes['pretrain_img_size'], sizes['embed_dim'], sizes['depths'], sizes['num_heads'],
                sizes['window_size'])
            pretrained = default_url if pretrained is None else pretrained
        super().__init__(pretrain_img_size=pretrain_img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, ape=ape,
                         patch_norm=patch_norm, out_indices=out_indices, frozen_stages=frozen_stages,
                         pretrained=None)
        for _, layer in self.named_sublayers():
            if 'relative_position_index' in layer._buffers:
                layer.register_buffer('relative_position_index', layer.relative_position_index, persistable=False)
        if pretrained:
            load_backbone_pretrained(self, pretrained, 'SwinTransformer.pretrained')
