"""RTDETRHGNetV2: official parameter names, shapes, freeze options, and numerics against numpy."""
import math

import numpy as np
import paddle
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from ppdet.core.workspace import SchemaDict, create, global_config

import ppdet_rtdetr  # noqa: F401  (registers modules)
from conftest import TINY_CFG, fresh_config, model_layout, reference_layout
from ppdet_rtdetr.modeling.hgnetv2 import RTDETRHGNetV2

H, W = 64, 96  # non-square on purpose, so an h/w swap shows up
BN_EPS = 1e-5


def _image(h=H, w=W, seed=0):
    return paddle.to_tensor(np.random.RandomState(seed).randn(1, 3, h, w).astype('float32'))


def _randomize(layer, seed=0):
    """Random weights and BN statistics (positive variances, scales around 1)."""
    rng = np.random.RandomState(seed)
    for name, t in layer.state_dict().items():
        shape = list(t.shape)
        if name.endswith('conv.weight'):
            fan_in = int(np.prod(shape[1:]))
            value = rng.randn(*shape) * math.sqrt(2. / fan_in)
        elif name.endswith(('_variance', 'bn.weight', 'lab.scale')):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # BN bias / running mean, LearnableAffine bias
            value = rng.uniform(-0.5, 0.5, shape)
        t.set_value(value.astype('float32'))


# ---- an independent numpy implementation of the official layers (float64) ----

def _np_conv(x, w, stride=1, pad=None, groups=1):
    """Cross-correlation. x [b, c, h, w], w [o, c/g, kh, kw]; pad = (top, bottom, left, right)."""
    o, _, kh, kw = w.shape
    if pad is None:
        pad = ((kh - 1) // 2,) * 2 + ((kw - 1) // 2,) * 2
    x = np.pad(x, [(0, 0), (0, 0), pad[:2], pad[2:]])
    # [b, c, oh, ow, kh, kw]
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    b, c, oh, ow = win.shape[:4]
    win = win.reshape(b, groups, c // groups, oh, ow, kh, kw)
    y = np.einsum('bgchwij,gocij->bgohw', win, w.reshape(groups, o // groups, -1, kh, kw))
    return y.reshape(b, o, oh, ow)


def _np_conv_bn_act(x, sd, prefix, act=True, **conv_kw):
    """Conv -> BN with stored statistics -> ReLU -> scale * x + bias (if the prefix has a lab)."""
    p = {k[len(prefix):]: v.numpy().astype('float64') for k, v in sd.items() if k.startswith(prefix)}
    w = p['conv.weight']
    y = _np_conv(x, w, groups=x.shape[1] // w.shape[1], **conv_kw)
    shape = (1, -1, 1, 1)
    y = (y - p['bn._mean'].reshape(shape)) / np.sqrt(p['bn._variance'].reshape(shape) + BN_EPS)
    y = y * p['bn.weight'].reshape(shape) + p['bn.bias'].reshape(shape)
    if act:
        y = np.maximum(y, 0.)
        if 'lab.scale' in p:
            y = p['lab.scale'] * y + p['lab.bias']
    return y


def _np_stem(x, sd):
    x = _np_conv_bn_act(x, sd, 'stem1.', stride=2)
    x2 = _np_conv_bn_act(x, sd, 'stem2a.', pad=(0, 1, 0, 1))
    x2 = _np_conv_bn_act(x2, sd, 'stem2b.', pad=(0, 1, 0, 1))
    # 2x2 max pool at stride 1 over a bottom/right border that never wins
    xp = np.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1)], constant_values=-np.inf)
    h, w = x.shape[2:]
    x1 = np.max([xp[:, :, i:i + h, j:j + w] for i in (0, 1) for j in (0, 1)], axis=0)
    x = np.concatenate([x1, x2], axis=1)
    x = _np_conv_bn_act(x, sd, 'stem3.', stride=2)
    return _np_conv_bn_act(x, sd, 'stem4.')


def _np_hg_block(x, sd, light, residual, num_layers=6):
    feats = [x]
    for i in range(num_layers):
        prefix = 'layers.{}.'.format(i)
        if light:
            y = _np_conv_bn_act(feats[-1], sd, prefix + 'conv1.', act=False)
            y = _np_conv_bn_act(y, sd, prefix + 'conv2.')
        else:
            y = _np_conv_bn_act(feats[-1], sd, prefix)
        feats.append(y)
    y = _np_conv_bn_act(np.concatenate(feats, axis=1), sd, 'aggregation_squeeze_conv.')
    y = _np_conv_bn_act(y, sd, 'aggregation_excitation_conv.')
    return y + x if residual else y


# ---- tests ----

@pytest.mark.parametrize('arch, fname', [('L', 'rtdetr_hgnetv2_l_keys.txt'),
                                         ('X', 'rtdetr_hgnetv2_x_keys.txt'),
                                         ('S', 'mask_rtdetr_hgnetv2_s_keys.txt'),
                                         ('M', 'mask_rtdetr_hgnetv2_m_keys.txt'),
                                         ('H', 'mask_rtdetr_hgnetv2_h_keys.txt')])
def test_state_dict_matches_official_checkpoint(arch, fname):
    ref = reference_layout(fname, 'backbone.')
    ours = model_layout(RTDETRHGNetV2(arch=arch))
    assert ref, 'no backbone keys read from ' + fname
    assert ours == ref, 'missing: {}\nextra: {}'.format(sorted(set(ref) - set(ours))[:10], sorted(set(ours) - set(ref))[:10])


def test_h_builds_with_documented_channels():
    model = RTDETRHGNetV2(arch='H', return_idx=[0, 1, 2, 3])
    sd = model.state_dict()
    assert list(sd['stem.stem1.conv.weight'].shape) == [48, 3, 3, 3]
    assert list(sd['stem.stem4.conv.weight'].shape) == [96, 48, 1, 1]
    # (mid, out, blocks, light) per stage, from PaddleDetection's arch_configs['H']
    want = [(96, 192, 2, False), (192, 512, 3, False), (384, 1024, 6, True), (768, 2048, 3, True)]
    for i, (mid, out, blocks, light) in enumerate(want):
        got_blocks = {k.split('.')[3] for k in sd if k.startswith('stages.{}.blocks.'.format(i))}
        assert len(got_blocks) == blocks, 'stage {}: {} blocks, want {}'.format(i, len(got_blocks), blocks)
        first = 'stages.{}.blocks.0.layers.0.{}conv.weight'.format(i, 'conv1.' if light else '')
        assert sd[first].shape[0] == mid, 'stage {} mid channels {}'.format(i, sd[first].shape[0])
        last = 'stages.{}.blocks.{}.aggregation_excitation_conv.conv.weight'.format(i, blocks - 1)
        assert sd[last].shape[0] == out, 'stage {} out channels {}'.format(i, sd[last].shape[0])
        assert ('stages.{}.downsample.conv.weight'.format(i) in sd) == (i > 0)
    assert [s.channels for s in model.out_shape] == [192, 512, 1024, 2048]


@pytest.mark.parametrize('h, w', [(H, W), (H + 1, W + 3)])  # odd sizes: every stride rounds up
def test_out_shape_matches_outputs(h, w):
    model = RTDETRHGNetV2(arch='L', return_idx=[0, 1, 2, 3])
    model.eval()
    with paddle.no_grad():
        outs = model({'image': _image(h, w)})
    assert len(outs) == len(model.out_shape) == 4
    for out, spec in zip(outs, model.out_shape):
        want = [1, spec.channels, math.ceil(h / spec.stride), math.ceil(w / spec.stride)]
        assert list(out.shape) == want, 'got {}, want {} (stride {})'.format(out.shape, want, spec.stride)
    assert [s.stride for s in model.out_shape] == [4, 8, 16, 32]


def test_return_idx_selects_stages():
    model = RTDETRHGNetV2(arch='L', return_idx=2)
    full = RTDETRHGNetV2(arch='L', return_idx=[0, 1, 2, 3])
    full.set_state_dict(model.state_dict())
    model.eval()
    full.eval()
    with paddle.no_grad():
        outs = model({'image': _image()})
        want = full({'image': _image()})[2]
    assert [(s.channels, s.stride) for s in model.out_shape] == [(1024, 16)]
    # the one output is stage 2 of the same network, not just a map of its shape
    assert len(outs) == 1
    np.testing.assert_array_equal(outs[0].numpy(), want.numpy())


def test_stem_matches_numpy_with_asymmetric_padding():
    # A negative LearnableAffine bias after stem1 makes the pool's input negative wherever ReLU
    # clipped, so the pool's padding has to be ignored rather than read as zeros; any other 2x2
    # padding shifts the result by a pixel.
    model = RTDETRHGNetV2(arch='L', use_lab=True)
    stem = model.stem
    _randomize(stem, seed=1)
    stem.stem1.lab.bias.set_value(np.array([-0.5], 'float32'))
    stem.eval()
    x = _image(17, 23, seed=2)  # odd sizes exercise the bottom/right border
    with paddle.no_grad():
        got = stem(x).numpy()
    want = _np_stem(x.numpy().astype('float64'), stem.state_dict())
    assert got.shape == want.shape, '{} vs {}'.format(got.shape, want.shape)
    err = np.abs(got - want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg='max abs err {}'.format(err))


@pytest.mark.parametrize('stage, block, light, residual', [
    (1, 0, False, False),  # 3x3 convs, 128 -> 512, no shortcut
    (2, 1, True, True),  # 1x1 + depthwise 5x5, 1024 -> 1024, with shortcut
])
def test_hg_block_matches_numpy(stage, block, light, residual):
    model = RTDETRHGNetV2(arch='L')
    hg_block = model.stages[stage].blocks[block]
    _randomize(hg_block, seed=3)
    hg_block.eval()
    ch_in = 128 if stage == 1 else 1024
    x = paddle.to_tensor(np.random.RandomState(4).randn(1, ch_in, 5, 7).astype('float32'))
    with paddle.no_grad():
        got = hg_block(x).numpy()
    want = _np_hg_block(x.numpy().astype('float64'), hg_block.state_dict(), light, residual)
    err = np.abs(got - want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg='max abs err {}'.format(err))


def test_frozen_norm_gives_eval_outputs_in_train_mode():
    model = RTDETRHGNetV2(arch='L', freeze_norm=True)
    _randomize(model, seed=5)
    x = _image()
    model.train()
    train_outs = [o.numpy() for o in model({'image': x})]
    model.eval()
    with paddle.no_grad():
        eval_outs = [o.numpy() for o in model({'image': x})]
    for a, b in zip(train_outs, eval_outs):
        err = np.abs(a - b).max()
        assert err == 0., 'frozen BN differs between train and eval: max abs err {}'.format(err)


def _lr(p):
    return p.optimize_attr['learning_rate']


def _weights(model):
    """Named parameters without the BN running statistics (which are never trained)."""
    return [(n, p) for n, p in model.named_parameters() if not n.endswith(('_mean', '_variance'))]


def test_default_freeze_options():
    # the official RT-DETR-L backbone options
    lrs = [0., 0.05, 0.05, 0.05, 0.05]
    model = RTDETRHGNetV2(arch='L', lr_mult_list=lrs, freeze_at=0, freeze_stem_only=True,
                          freeze_norm=True)
    for name, p in _weights(model):
        if name.startswith('stem.') or '.bn.' in name:
            assert p.stop_gradient, name + ' should be frozen'
        else:
            assert not p.stop_gradient, name + ' should train'
            stage = int(name.split('.')[1])
            assert _lr(p) == lrs[stage + 1], '{}: lr {} want {}'.format(name, _lr(p), lrs[stage + 1])
        if '.bn.' in name:
            assert _lr(p) == 0., name
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    assert bns and all(m._use_global_stats for m in bns)


def test_freeze_stages_and_trainable_norm():
    lrs = [0.1, 0.2, 0.3, 0.4, 0.5]
    model = RTDETRHGNetV2(arch='L', lr_mult_list=lrs, freeze_at=1, freeze_stem_only=False,
                          freeze_norm=False, use_lab=True)
    for name, p in _weights(model):
        stage = -1 if name.startswith('stem.') else int(name.split('.')[1])
        assert p.stop_gradient == (stage <= 1), '{}: stop_gradient {}'.format(name, p.stop_gradient)
        want = lrs[stage + 1] * (0.01 if '.lab.' in name else 1.)
        assert abs(_lr(p) - want) < 1e-12, '{}: lr {} want {}'.format(name, _lr(p), want)
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    assert bns and not any(m._use_global_stats for m in bns)


def test_freeze_at_minus_one_trains_everything():
    model = RTDETRHGNetV2(arch='L', freeze_at=-1, freeze_norm=False)
    frozen = [n for n, p in _weights(model) if p.stop_gradient]
    assert not frozen, 'frozen: {}'.format(frozen[:5])


def test_lab_only_after_activations():
    sd = RTDETRHGNetV2(arch='L', use_lab=True).state_dict()
    labs = {k[:-len('lab.scale')] for k in sd if k.endswith('lab.scale')}
    assert 'stem.stem1.' in labs and 'stages.2.blocks.0.layers.0.conv2.' in labs
    # no activation after the downsample conv or the 1x1 of a light layer, so no affine block there
    assert not any('downsample' in k or k.endswith('conv1.') for k in labs), sorted(labs)[:5]
    convs = {k[:-len('conv.weight')] for k in sd if k.endswith('conv.weight')}
    want = {c for c in convs if 'downsample' not in c and not c.endswith('conv1.')}
    assert labs == want, 'missing {}, extra {}'.format(sorted(want - labs)[:3], sorted(labs - want)[:3])


def test_sync_bn_falls_back_to_batchnorm_on_one_process():
    model = RTDETRHGNetV2(arch='L', norm_type='sync_bn', freeze_norm=False)
    assert not any(isinstance(m, paddle.nn.SyncBatchNorm) for m in model.sublayers())
    assert model_layout(model) == reference_layout('rtdetr_hgnetv2_l_keys.txt', 'backbone.')


def test_registered_with_ppdet_schema():
    fresh_config(TINY_CFG)  # a clean workspace: a config loaded before (Mask-RT-DETR: 4 levels) must not leak in
    schema = global_config['RTDETRHGNetV2']
    assert isinstance(schema, SchemaDict)
    model = create('RTDETRHGNetV2')
    assert isinstance(model, RTDETRHGNetV2)
    assert [(s.channels, s.stride) for s in model.out_shape] == [(512, 8), (1024, 16), (2048, 32)]


def test_rejects_bad_options():
    with pytest.raises(ValueError):
        RTDETRHGNetV2(arch='B')
    with pytest.raises(ValueError):
        RTDETRHGNetV2(lr_mult_list=[1.0] * 4)
    with pytest.raises(ValueError):
        RTDETRHGNetV2(return_idx=[4])
