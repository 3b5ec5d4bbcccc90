"""FocalNet backbone (Yang et al., "Focal Modulation Networks"), with PaddleDetection's parameter names.

paddledet 2.6.0 has no FocalNet; the official RT-DETR FocalNet-L config needs one. The layers, attribute
names and `arch` table follow PaddleDetection develop's `ppdet/modeling/backbones/focalnet.py`, so its
checkpoints (and the official RT-DETR FocalNet-L weights) load by name.
"""
import numpy as np
import paddle
import paddle.nn as nn
from ppdet.core.workspace import register
from ppdet.modeling.backbones.swin_transformer import Mlp
from ppdet.modeling.backbones.transformer_utils import DropPath, Identity, add_parameter, ones_, to_2tuple, \
    trunc_normal_, zeros_
from ppdet.modeling.shape_spec import ShapeSpec

from .pretrained import load_backbone_pretrained

__all__ = ['RTDETRFocalNet', 'FOCALNET_ARCHS', 'FocalModulation']

_URL = 'https://bj.bcebos.com/v1/paddledet/models/pretrained/focalnet_{}_pretrained.pdparams'


def _arch(embed_dim, depths, levels, window, drop_path, large, url, postln_in_modulation=False,
          normalize_modulator=False):
    return dict(embed_dim=embed_dim, depths=depths, focal_levels=[levels] * 4, focal_windows=[window] * 4,
                drop_path_rate=drop_path, use_conv_embed=large, use_postln=large, use_layerscale=large,
                use_postln_in_modulation=postln_in_modulation, normalize_modulator=normalize_modulator,
                pretrained=_URL.format(url))


# PaddleDetection develop's `arch` names: srf/lrf = small/large receptive field (2/3 focal levels), 22k = the
# ImageNet-22k large models (overlapping conv embedding, post-LN, layer scale)
FOCALNET_ARCHS = {
    'focalnet_T_224_1k_srf': _arch(96, [2, 2, 6, 2], 2, 3, 0.2, False, 'tiny_srf'),
    'focalnet_S_224_1k_srf': _arch(96, [2, 2, 18, 2], 2, 3, 0.3, False, 'small_srf'),
    'focalnet_B_224_1k_srf': _arch(128, [2, 2, 18, 2], 2, 3, 0.5, False, 'base_srf'),
    'focalnet_T_224_1k_lrf': _arch(96, [2, 2, 6, 2], 3, 3, 0.2, False, 'tiny_lrf'),
    'focalnet_S_224_1k_lrf': _arch(96, [2, 2, 18, 2], 3, 3, 0.3, False, 'small_lrf'),
    'focalnet_B_224_1k_lrf': _arch(128, [2, 2, 18, 2], 3, 3, 0.5, False, 'base_lrf'),
    'focalnet_L_384_22k_fl3': _arch(192, [2, 2, 18, 2], 3, 5, 0.5, True, 'large_lrf_384'),
    'focalnet_L_384_22k_fl4': _arch(192, [2, 2, 18, 2], 4, 3, 0.5, True, 'large_lrf_384_fl4',
                                    normalize_modulator=True),
    'focalnet_XL_384_22k_fl3': _arch(256, [2, 2, 18, 2], 3, 5, 0.5, True, 'xlarge_lrf_384'),
    'focalnet_XL_384_22k_fl4': _arch(256, [2, 2, 18, 2], 4, 3, 0.5, True, 'xlarge_lrf_384_fl4'),
    'focalnet_H_224_22k_fl3': _arch(352, [2, 2, 18, 2], 3, 3, 0.5, True, 'huge_lrf_224', postln_in_modulation=True),
    'focalnet_H_224_22k_fl4': _arch(352, [2, 2, 18, 2], 4, 3, 0.5, True, 'huge_lrf_224_fl4',
                                    postln_in_modulation=True),
}
# what `arch` sets, overriding the explicit options (as PaddleDetection does)
ARCH_KEYS = ('embed_dim', 'depths', 'focal_levels', 'focal_windows', 'drop_path_rate', 'use_conv_embed', 'use_postln',
             'use_layerscale', 'use_postln_in_modulation', 'normalize_modulator')


class FocalModulation(nn.Layer):
    """Focal modulation: y = proj(q * h(sum_l gate_l * ctx_l + gate_L * gelu(mean(ctx_L)))).

    `f` projects x to the query q, the context ctx_0 and L + 1 gates; ctx_l = gelu(dwconv_l(ctx_{l-1})) with
    kernel focal_window + 2 * (l - 1) ('same' padding); `h` is a 1x1 conv.

    Args:
        dim (int): channels c. proj_drop (float): dropout after `proj`.
        focal_level (int): L. focal_window (int): kernel of the first level. focal_factor (int): kernel growth.
        use_postln_in_modulation (bool): LayerNorm `ln` before `proj`.
        normalize_modulator (bool): divide the summed context by L + 1.

    forward(x [b, h, w, c]) -> [b, h, w, c].
    """

    def __init__(self, dim, proj_drop=0., focal_level=2, focal_window=7, focal_factor=2,
                 use_postln_in_modulation=False, normalize_modulator=False):
        super().__init__()
        self.focal_level = focal_level
        self.use_postln_in_modulation = use_postln_in_modulation
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2D(dim, dim, 1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)
        self.focal_layers = nn.LayerList()
        for level in range(focal_level):
            kernel = focal_factor * level + focal_window
            self.focal_layers.append(nn.Sequential(
                nn.Conv2D(dim, dim, kernel, groups=dim, padding=kernel // 2, bias_attr=False), nn.GELU()))

    def forward(self, x):
        c = x.shape[-1]
        x = self.f(x).transpose([0, 3, 1, 2])  # [b, h, w, 2c + L + 1] -> [b, 2c + L + 1, h, w]
        q, ctx, gates = paddle.split(x, [c, c, self.focal_level + 1], axis=1)
        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level:level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))  # [b, c, 1, 1]
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        out = (q * self.h(ctx_all)).transpose([0, 2, 3, 1])  # [b, c, h, w] -> [b, h, w, c]
        if self.use_postln_in_modulation:
            out = self.ln(out)
        return self.proj_drop(self.proj(out))


class FocalModulationBlock(nn.Layer):
    """Pre-LN (or post-LN) residual block: x + gamma_1 * modulation, then x + gamma_2 * MLP.

    forward(x [b, h*w, c], h, w) -> [b, h*w, c]. `gamma_1` / `gamma_2` are parameters with layer scale, else 1.
    """

    def __init__(self, dim, mlp_ratio=4., drop=0., drop_path=0., focal_level=2, focal_window=9, use_postln=False,
                 use_postln_in_modulation=False, normalize_modulator=False, use_layerscale=False,
                 layerscale_value=1e-4):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, drop, focal_level, focal_window,
                                          use_postln_in_modulation=use_postln_in_modulation,
                                          normalize_modulator=normalize_modulator)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.gamma_1, self.gamma_2 = 1.0, 1.0
        if use_layerscale:
            self.gamma_1 = add_parameter(self, layerscale_value * paddle.ones([dim]))
            self.gamma_2 = add_parameter(self, layerscale_value * paddle.ones([dim]))

    def forward(self, x, h, w):
        c = x.shape[-1]
        shortcut = x
        if not self.use_postln:
            x = self.norm1(x)
        x = self.modulation(x.reshape([-1, h, w, c])).reshape([-1, h * w, c])  # [b, h*w, c] <-> [b, h, w, c]
        if self.use_postln:
            x = self.norm1(x)
        x = shortcut + self.drop_path(self.gamma_1 * x)
        if self.use_postln:
            return x + self.drop_path(self.gamma_2 * self.norm2(self.mlp(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    """Patch embedding: a patch_size-stride conv, or with `use_conv_embed` an overlapping one (stem 7x7 stride 4,
    later 3x3 stride 2), then LayerNorm over channels. forward([b, c_in, h, w]) -> [b, embed_dim, h', w']."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm=True, use_conv_embed=False, is_stem=False):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.embed_dim = embed_dim
        if use_conv_embed:
            kernel, padding, stride = (7, 2, 4) if is_stem else (3, 1, 2)
            self.proj = nn.Conv2D(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        else:
            self.proj = nn.Conv2D(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x):
        h, w = x.shape[2:]
        ph, pw = self.patch_size
        if w % pw or h % ph:  # pad right / bottom to whole patches
            x = nn.functional.pad(x, [0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph])
        x = self.proj(x)
        if self.norm is not None:
            hh, ww = x.shape[2:]
            x = self.norm(x.flatten(2).transpose([0, 2, 1]))  # [b, c, h', w'] -> [b, h'*w', c]
            x = x.transpose([0, 2, 1]).reshape([-1, self.embed_dim, hh, ww])
        return x


class BasicLayer(nn.Layer):
    """One stage: `depth` blocks, then a stride-2 PatchEmbed `downsample` (all stages but the last).

    forward(x [b, h*w, c], h, w) -> (stage output [b, h*w, c], h, w, next input [b, h'*w', 2c], h', w')."""

    def __init__(self, dim, depth, drop_path, downsample, use_conv_embed, **block_cfg):
        super().__init__()
        self.blocks = nn.LayerList([FocalModulationBlock(dim, drop_path=float(drop_path[i]), **block_cfg)
                                    for i in range(depth)])
        self.downsample = PatchEmbed(2, dim, 2 * dim, True, use_conv_embed) if downsample else None

    def forward(self, x, h, w):
        for block in self.blocks:
            x = block(x, h, w)
        if self.downsample is None:
            return x, h, w, x, h, w
        x_down = self.downsample(x.transpose([0, 2, 1]).reshape([x.shape[0], x.shape[-1], h, w]))
        x_down = x_down.flatten(2).transpose([0, 2, 1])  # [b, 2c, h', w'] -> [b, h'*w', 2c]
        return x, h, w, x_down, (h + 1) // 2, (w + 1) // 2


@register
class RTDETRFocalNet(nn.Layer):
    """FocalNet backbone, PaddleDetection's `FocalNet` options and state-dict names.

    Args:
        arch (str|None): one of FOCALNET_ARCHS; as in PaddleDetection it sets ARCH_KEYS (overriding those
            options) and the default `pretrained` URL. None: the explicit options, no default weights.
        out_indices (list[int]): stages returned (0..3, strides 4..32), each through its LayerNorm `norm{i}`.
        frozen_stages (int): -1 none; >= 0 freezes the patch embedding; >= 2 also stages 0..frozen_stages-2.
        patch_size, in_chans, embed_dim, depths, mlp_ratio, drop_rate, drop_path_rate (linearly increasing over
            the blocks), patch_norm, focal_levels, focal_windows, use_conv_embed, use_layerscale,
            layerscale_value, use_postln, use_postln_in_modulation, normalize_modulator: the FocalNet options.
        pretrained (str|None): ImageNet weights, URL or file; '' builds without them; None: the arch's URL.

    forward(inputs with 'image' [b, 3, H, W]) -> list of [b, embed_dim * 2**i, H / 2**(i+2), W / 2**(i+2)] for i in
    out_indices. Raises RuntimeError naming the URL and `FocalNet.pretrained` when the download fails.
    """

    def __init__(self, arch='focalnet_T_224_1k_srf', out_indices=(0, 1, 2, 3), frozen_stages=-1, patch_size=4,
                 in_chans=3, embed_dim=96, depths=[2, 2, 6, 2], mlp_ratio=4., drop_rate=0., drop_path_rate=0.2,
                 patch_norm=True, focal_levels=[2, 2, 2, 2], focal_windows=[3, 3, 3, 3], use_conv_embed=False,
                 use_layerscale=False, layerscale_value=1e-4, use_postln=False, use_postln_in_modulation=False,
                 normalize_modulator=False, pretrained=None):
        super().__init__()
        opts = dict(embed_dim=embed_dim, depths=depths, focal_levels=focal_levels, focal_windows=focal_windows,
                    drop_path_rate=drop_path_rate, use_conv_embed=use_conv_embed, use_postln=use_postln,
                    use_layerscale=use_layerscale, use_postln_in_modulation=use_postln_in_modulation,
                    normalize_modulator=normalize_modulator)
        if arch is not None:
            if arch not in FOCALNET_ARCHS:
                raise ValueError(f'FocalNet.arch {arch!r} is not one of {sorted(FOCALNET_ARCHS)}')
            opts.update({k: FOCALNET_ARCHS[arch][k] for k in ARCH_KEYS})
            pretrained = FOCALNET_ARCHS[arch]['pretrained'] if pretrained is None else pretrained
        depths, embed_dim = list(opts['depths']), opts['embed_dim']
        self.out_indices = list(out_indices)
        self.frozen_stages = frozen_stages
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm, opts['use_conv_embed'], is_stem=True)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = np.linspace(0, opts['drop_path_rate'], sum(depths))
        self.layers = nn.LayerList()
        for i, depth in enumerate(depths):
            self.layers.append(BasicLayer(
                int(embed_dim * 2 ** i), depth, drop_path[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_layers - 1, use_conv_embed=opts['use_conv_embed'], mlp_ratio=mlp_ratio,
                drop=drop_rate, focal_level=opts['focal_levels'][i], focal_window=opts['focal_windows'][i],
                use_postln=opts['use_postln'], use_postln_in_modulation=opts['use_postln_in_modulation'],
                normalize_modulator=opts['normalize_modulator'], use_layerscale=opts['use_layerscale'],
                layerscale_value=layerscale_value))
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_sublayer(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self.apply(self._init_weights)
        self._freeze_stages()
        if pretrained:
            load_backbone_pretrained(self, pretrained, 'FocalNet.pretrained')

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            frozen += [self.pos_drop] + [self.layers[i] for i in range(self.frozen_stages - 1)]
        for layer in frozen:
            layer.eval()
            for param in layer.parameters():
                param.stop_gradient = True

    @staticmethod
    def _init_weights(layer):
        if isinstance(layer, nn.Linear):
            trunc_normal_(layer.weight)
            if layer.bias is not None:
                zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            zeros_(layer.bias)
            ones_(layer.weight)

    def forward(self, inputs):
        x = self.patch_embed(inputs['image'])
        h, w = x.shape[2:]
        x = self.pos_drop(x.flatten(2).transpose([0, 2, 1]))  # [b, c, h, w] -> [b, h*w, c]
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, hi, wi, x, h, w = layer(x, h, w)
            if i in self.out_indices:
                x_out = getattr(self, f'norm{i}')(x_out)
                outs.append(x_out.reshape([-1, hi, wi, self.num_features[i]]).transpose([0, 3, 1, 2]))
        return outs

    @property
    def out_shape(self):
        return [ShapeSpec(channels=self.num_features[i], stride=4 * 2 ** i) for i in self.out_indices]
