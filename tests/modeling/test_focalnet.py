"""RTDETRFocalNet: PaddleDetection's FocalNet state-dict layout, a block against a numpy formula, weight download."""
import math

import numpy as np
import paddle
import pytest

from ppdet_rtdetr.modeling.focalnet import FocalModulationBlock, RTDETRFocalNet
from ppdet_rtdetr.modeling.swin import RTDETRSwinTransformer

# the FocalNet-L (fl4) options at a small width: overlapping conv embedding, layer scale, post-LN, 4 focal levels
LARGE_LIKE = dict(arch=None, embed_dim=8, depths=[1, 1, 2, 1], focal_levels=[4, 4, 4, 4], focal_windows=[3, 3, 3, 3],
                  use_conv_embed=True, use_layerscale=True, use_postln=True, normalize_modulator=True,
                  out_indices=[1, 2, 3], pretrained='')


def official_layout(embed_dim, depths, focal_levels, focal_windows, use_conv_embed, use_layerscale,
                    use_postln_in_modulation=False, out_indices=(0, 1, 2, 3), mlp_ratio=4, **_):
    """{name: shape} as PaddleDetection's FocalNet names its parameters (ppdet/modeling/backbones/focalnet.py):
    Paddle Linear weights are [in, out], convs [out, in / groups, k, k]."""
    e, out = embed_dim, {}
    k = (7, 7) if use_conv_embed else (4, 4)
    out.update({'patch_embed.proj.weight': (e, 3) + k, 'patch_embed.proj.bias': (e,),
                'patch_embed.norm.weight': (e,), 'patch_embed.norm.bias': (e,)})
    for i, depth in enumerate(depths):
        d, levels = e * 2 ** i, focal_levels[i]
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            for norm in ('norm1', 'norm2'):
                out.update({p + norm + '.weight': (d,), p + norm + '.bias': (d,)})
            gated = 2 * d + levels + 1  # q, context and L + 1 gates
            out.update({p + 'modulation.f.weight': (d, gated), p + 'modulation.f.bias': (gated,),
                        p + 'modulation.h.weight': (d, d, 1, 1), p + 'modulation.h.bias': (d,),
                        p + 'modulation.proj.weight': (d, d), p + 'modulation.proj.bias': (d,),
                        p + 'mlp.fc1.weight': (d, mlp_ratio * d), p + 'mlp.fc1.bias': (mlp_ratio * d,),
                        p + 'mlp.fc2.weight': (mlp_ratio * d, d), p + 'mlp.fc2.bias': (d,)})
            for level in range(levels):
                ks = focal_windows[i] + 2 * level
                out[p + f'modulation.focal_layers.{level}.0.weight'] = (d, 1, ks, ks)
            if use_postln_in_modulation:
                out.update({p + 'modulation.ln.weight': (d,), p + 'modulation.ln.bias': (d,)})
            if use_layerscale:
                out.update({p + 'gamma_1': (d,), p + 'gamma_2': (d,)})
        if i < len(depths) - 1:
            k = (3, 3) if use_conv_embed else (2, 2)
            p = f'layers.{i}.downsample.'
            out.update({p + 'proj.weight': (2 * d, d) + k, p + 'proj.bias': (2 * d,),
                        p + 'norm.weight': (2 * d,), p + 'norm.bias': (2 * d,)})
    for i in out_indices:
        out.update({f'norm{i}.weight': (e * 2 ** i,), f'norm{i}.bias': (e * 2 ** i,)})
    return out


@pytest.mark.parametrize('options', [
    LARGE_LIKE,
    dict(LARGE_LIKE, use_conv_embed=False, use_layerscale=False, use_postln=False, use_postln_in_modulation=True,
         focal_levels=[2, 2, 3, 3], focal_windows=[3, 5, 3, 5], out_indices=[0, 1, 2, 3]),
], ids=['large_like', 'small_like'])
def test_state_dict_layout_is_paddledetections(options):
    got = {k: tuple(v.shape) for k, v in RTDETRFocalNet(**options).state_dict().items()}
    want = official_layout(**options)
    assert got == want, f'missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}'


def test_outputs_have_the_out_shape_strides_and_channels():
    net = RTDETRFocalNet(**LARGE_LIKE)
    outs = net({'image': paddle.rand([1, 3, 64, 96])})
    assert [list(o.shape) for o in outs] == [[1, s.channels, 64 // s.stride, 96 // s.stride] for s in net.out_shape]
    assert [s.channels for s in net.out_shape] == [16, 32, 64]


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _layer_norm(x, w, b, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _depthwise(x, kernel):
    """x [h, w, c], kernel [c, 1, k, k]: 'same' zero-padded cross-correlation, one filter per channel."""
    h, w, _ = x.shape
    k = kernel.shape[-1]
    pad = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = np.zeros_like(x)
    for dy in range(k):
        for dx in range(k):
            out += pad[dy:dy + h, dx:dx + w] * kernel[:, 0, dy, dx]
    return out


def _block_reference(x, h, w, p, levels):
    """Post-LN FocalNet block with layer scale and a normalized modulator, written out (one image)."""
    c = x.shape[-1]
    t = x.reshape(h, w, c) @ p['modulation.f.weight'] + p['modulation.f.bias']
    q, ctx, gates = t[..., :c], t[..., c:2 * c], t[..., 2 * c:]
    ctx_all = 0
    for level in range(levels):
        ctx = _gelu(_depthwise(ctx, p[f'modulation.focal_layers.{level}.0.weight']))
        ctx_all = ctx_all + ctx * gates[..., level:level + 1]
    ctx_all = ctx_all + _gelu(ctx.mean((0, 1))) * gates[..., levels:]
    ctx_all = ctx_all / (levels + 1)
    modulator = ctx_all @ p['modulation.h.weight'][:, :, 0, 0].T + p['modulation.h.bias']
    y = (q * modulator) @ p['modulation.proj.weight'] + p['modulation.proj.bias']
    y = _layer_norm(y.reshape(h * w, c), p['norm1.weight'], p['norm1.bias'])
    x = x + p['gamma_1'] * y
    mlp = _gelu(x @ p['mlp.fc1.weight'] + p['mlp.fc1.bias']) @ p['mlp.fc2.weight'] + p['mlp.fc2.bias']
    return x + p['gamma_2'] * _layer_norm(mlp, p['norm2.weight'], p['norm2.bias'])


def test_block_equals_the_focal_modulation_formula():
    paddle.seed(3)
    c, h, w, levels = 6, 5, 7, 3  # odd, non-square map: 'same' padding and the global context both matter
    block = FocalModulationBlock(c, focal_level=levels, focal_window=3, use_postln=True, normalize_modulator=True,
                                 use_layerscale=True, layerscale_value=0.5)
    rng = np.random.RandomState(0)
    for param in block.parameters():  # away from the init (zero biases, unit norms) so every term counts
        param.set_value(rng.normal(0, 0.5, param.shape).astype('float32'))
    block.eval()
    x = rng.normal(0, 1, (1, h * w, c)).astype('float32')
    got = block(paddle.to_tensor(x), h, w).numpy()[0]
    p = {k: v.numpy().astype('float64') for k, v in block.state_dict().items()}
    want = _block_reference(x[0].astype('float64'), h, w, p, levels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f'max err {np.abs(got - want).max():.2e}')


UNREACHABLE = 'http://127.0.0.1:9/backbone_imagenet.pdparams'


@pytest.mark.parametrize('build, key', [
    (lambda url: RTDETRFocalNet(**dict(LARGE_LIKE, pretrained=url)), 'FocalNet.pretrained'),
    (lambda url: RTDETRSwinTransformer(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], pretrained=url),
     'SwinTransformer.pretrained'),
], ids=['focalnet', 'swin'])
def test_offline_download_fails_naming_the_url_and_the_key(build, key):
    with pytest.raises(RuntimeError) as err:
        build(UNREACHABLE)
    assert str(err.value).startswith(f'{key}: could not download the ImageNet weights {UNREACHABLE} (')
    assert "Set `pretrained: ''` in that section to build without them" in str(err.value)


def test_a_local_pretrained_file_is_loaded(tmp_path):
    paddle.seed(0)
    source = RTDETRFocalNet(**LARGE_LIKE)
    path = str(tmp_path / 'focalnet.pdparams')
    paddle.save(source.state_dict(), path)
    paddle.seed(1)
    loaded = RTDETRFocalNet(**dict(LARGE_LIKE, pretrained=path))
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), value.numpy(), err_msg=name)


def test_arch_sets_the_official_sizes_and_weights_url(monkeypatch):
    asked = []
    monkeypatch.setattr('ppdet_rtdetr.modeling.focalnet.load_backbone_pretrained',
                        lambda layer, url, key: asked.append((url, key)))
    net = RTDETRFocalNet(arch='focalnet_T_224_1k_lrf', embed_dim=8, out_indices=[3])
    assert asked == [('https://bj.bcebos.com/v1/paddledet/models/pretrained/focalnet_tiny_lrf_pretrained.pdparams',
                      'FocalNet.pretrained')]
    assert net.num_features == [96, 192, 384, 768], 'arch must win over embed_dim, as in PaddleDetection'
    assert len(net.layers[0].blocks[0].modulation.focal_layers) == 3
