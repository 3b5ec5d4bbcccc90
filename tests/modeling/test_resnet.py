"""RTDETRResNet: official parameter names, parity with ppdet 2.6.0's ResNet, and its options."""

import numpy as np
import paddle
import pytest
from ppdet.core.workspace import global_config
from ppdet.modeling.backbones.resnet import ResNet as PPDetResNet

import ppdet_rtdetr  # noqa: F401  (registers modules)
from conftest import model_layout, reference_layout
from ppdet_rtdetr.modeling.resnet import RTDETRResNet

H, W = 64, 96  # non-square on purpose, so an h/w swap shows up


def _image(seed=0, h=H, w=W):
    return paddle.to_tensor(np.random.RandomState(seed).randn(1, 3, h, w).astype('float32'))


@pytest.mark.parametrize('depth, fname', [(18, 'rtdetr_r18vd_keys.txt'), (50, 'rtdetr_r50vd_keys.txt')])
def test_state_dict_matches_official_checkpoint(depth, fname):
    ref = reference_layout(fname, 'backbone.')
    ours = model_layout(RTDETRResNet(depth=depth))
    assert ref, 'no backbone keys read from ' + fname
    assert ours == ref, 'missing: {}\nextra: {}'.format(sorted(set(ref) - set(ours))[:10], sorted(set(ours) - set(ref))[:10])


@pytest.mark.parametrize('depth, counts', [(34, [3, 4, 6, 3]), (101, [3, 4, 23, 3])])
def test_deeper_nets_follow_ppdet_names(depth, counts):
    model = RTDETRResNet(depth=depth)
    sd = model.state_dict()
    for i, count in enumerate(counts):
        blocks = {k.split('.')[1] for k in sd if k.startswith('res{}.'.format(i + 2))}
        assert len(blocks) == count, 'res{}: {} blocks, want {}'.format(i + 2, len(blocks), count)
    if depth == 101:
        # NameAdapter: res4 with more than 10 blocks is res4a, res4b1 .. res4b22.
        assert {'res4.res4a.branch2a.conv.weight', 'res4.res4b1.branch2a.conv.weight',
                'res4.res4b22.branch2c.conv.weight'} <= set(sd)
        assert list(sd['res4.res4b22.branch2c.conv.weight'].shape) == [1024, 256, 1, 1]
        assert list(sd['res5.res5c.branch2c.conv.weight'].shape) == [2048, 512, 1, 1]
        assert not any(k.startswith('res4.res4c') for k in sd)
    else:
        assert list(sd['res4.res4f.branch2b.conv.weight'].shape) == [256, 256, 3, 3]
        assert list(sd['res5.res5a.short.conv.conv.weight'].shape) == [512, 256, 1, 1]
        assert not any('branch2c' in k for k in sd)
    assert [s.channels for s in model.out_shape] == (
        [256, 512, 1024, 2048] if depth == 101 else [64, 128, 256, 512])
    # ppdet's own ResNet is an independent source for every name and shape.
    assert model_layout(model) == model_layout(PPDetResNet(depth=depth, variant='d'))


@pytest.mark.parametrize('depth, variant', [(18, 'd'), (50, 'd'), (50, 'a'), (34, 'b')])
def test_parity_with_ppdet_resnet(depth, variant):
    paddle.seed(0)
    ref = PPDetResNet(depth=depth, variant=variant, norm_type='bn', freeze_at=0)
    rng = np.random.RandomState(1)
    # Random BN statistics and affine params too, so a norm that is skipped or mis-wired shows up.
    for name, p in ref.state_dict().items():
        value = rng.uniform(0.5, 1.5, p.shape) if name.endswith(('_variance', 'norm.weight')) \
            else rng.uniform(-0.1, 0.1, p.shape) if 'norm' in name else rng.randn(*p.shape) * 0.05
        p.set_value(value.astype('float32'))
    ours = RTDETRResNet(depth=depth, variant=variant)
    ours.set_state_dict(ref.state_dict())
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(ref_sd) == set(our_sd)
    for k in ref_sd:
        np.testing.assert_array_equal(our_sd[k].numpy(), ref_sd[k].numpy(), err_msg=k)

    ref.eval()
    ours.eval()
    # Odd sizes exercise the ceil_mode of the variant-d average-pool shortcut.
    for h, w in [(H, W), (H + 1, W + 3)]:
        x = _image(h=h, w=w)
        ref_outs, our_outs = ref({'image': x}), ours({'image': x})
        assert len(our_outs) == len(ref_outs) == 4
        for i, (a, b) in enumerate(zip(our_outs, ref_outs)):
            a, b = a.numpy(), b.numpy()
            assert a.shape == b.shape, '{}x{} stage {}: {} vs {}'.format(h, w, i, a.shape, b.shape)
            err = np.abs(a - b).max()
            np.testing.assert_allclose(
                a, b, rtol=0, atol=1e-6,
                err_msg='{}x{} stage {} max abs err {:.3g}'.format(h, w, i, err))
            assert np.abs(b).max() > 1e-3, 'stage {} output is all ~0, parity is vacuous'.format(i)


def _learnable(model):
    # BN running statistics are parameters in Paddle, but never receive gradients.
    return [(k, p) for k, p in model.named_parameters() if not k.endswith(('_mean', '_variance'))]


def _frozen_prefixes(model):
    """Top-level sublayer names (conv1, res2, ...) whose conv weights have stop_gradient set."""
    return {k.split('.')[0] for k, p in model.named_parameters()
            if k.endswith('conv.weight') and p.stop_gradient}


@pytest.mark.parametrize('freeze_at, stem_only, frozen', [
    (-1, False, set()),
    (0, False, {'conv1', 'res2'}),
    (2, False, {'conv1', 'res2', 'res3', 'res4'}),
    (2, True, {'conv1'}),
    (-1, True, set()),
])
def test_freeze_at_and_freeze_stem_only(freeze_at, stem_only, frozen):
    model = RTDETRResNet(depth=18, freeze_at=freeze_at, freeze_stem_only=stem_only, freeze_norm=False)
    assert _frozen_prefixes(model) == frozen
    # Freezing covers every parameter of a frozen part, BN included, and nothing else.
    for k, p in _learnable(model):
        assert p.stop_gradient == (k.split('.')[0] in frozen), k


@pytest.mark.parametrize('freeze_norm', [True, False])
def test_freeze_norm(freeze_norm):
    model = RTDETRResNet(depth=18, freeze_at=-1, freeze_norm=freeze_norm, norm_decay=0.)
    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    assert len(norms) == 115 // 5  # one BN per conv in the R18 state dict (5 entries each)
    for bn in norms:
        assert bn._use_global_stats is (True if freeze_norm else None)
        for p in (bn.weight, bn.bias):
            assert p.trainable is not freeze_norm
            assert p.stop_gradient is freeze_norm
            assert p.optimize_attr['learning_rate'] == (0. if freeze_norm else 1.)
    for k, p in model.named_parameters():
        if k.endswith('conv.weight'):
            assert not p.stop_gradient, k

    # Behaviour: a frozen BN normalises with its stored statistics even in train mode.
    x = _image()
    model.train()
    train_out = model({'image': x})[-1].numpy()
    model.eval()
    eval_out = model({'image': x})[-1].numpy()
    err = np.abs(train_out - eval_out).max()
    if freeze_norm:
        assert err < 1e-6, 'frozen BN: train vs eval max abs err {:.3g}'.format(err)
    else:
        assert err > 1e-3, 'trainable BN should use batch stats in train mode, err {:.3g}'.format(err)


def test_lr_mult_list():
    lrs = [0.1, 0.2, 0.3, 0.4]
    model = RTDETRResNet(depth=18, lr_mult_list=lrs, freeze_norm=False)
    want = {'conv1': 1.0, 'res2': 0.1, 'res3': 0.2, 'res4': 0.3, 'res5': 0.4}
    seen = set()
    for k, p in _learnable(model):
        # Conv weights and (unfrozen) BN scale/shift take the stage multiplier; the stem keeps 1.0.
        assert p.optimize_attr['learning_rate'] == pytest.approx(want[k.split('.')[0]]), k
        seen.add(k.split('.')[0])
    assert seen == set(want)


@pytest.mark.parametrize('depth, return_idx, num_stages', [
    (18, [1, 3], 4), (50, 2, 4), (18, [0, 1], 2), (50, [0], 1)])
def test_return_idx_and_out_shape(depth, return_idx, num_stages):
    model = RTDETRResNet(depth=depth, return_idx=return_idx, num_stages=num_stages)
    # the four-stage network with the same weights: the returned maps are its stages `return_idx`
    full = RTDETRResNet(depth=depth, return_idx=[0, 1, 2, 3])
    full.set_state_dict(model.state_dict())
    model.eval()
    full.eval()
    outs = model({'image': _image()})
    every = full({'image': _image()})
    idx = [return_idx] if isinstance(return_idx, int) else return_idx
    assert len(outs) == len(model.out_shape) == len(idx)
    for out, spec, i in zip(outs, model.out_shape, idx):
        assert spec.stride == [4, 8, 16, 32][i]
        assert list(out.shape) == [1, spec.channels, H // spec.stride, W // spec.stride]
        np.testing.assert_array_equal(out.numpy(), every[i].numpy(), err_msg=f'stage {i}')
    assert not any(k.startswith('res{}'.format(num_stages + 2)) for k in model.state_dict())


@pytest.mark.parametrize('variant', ['b', 'd'])
def test_odd_input_sizes_round_up(variant):
    h, w = 65, 99
    model = RTDETRResNet(depth=18, variant=variant)
    model.eval()
    outs = model({'image': _image(h=h, w=w)})
    for out, stride in zip(outs, [4, 8, 16, 32]):
        want = [-(-h // stride), -(-w // stride)]
        assert list(out.shape[2:]) == want, 'stride {}: {} vs {}'.format(stride, out.shape, want)


def test_return_idx_list_is_copied():
    # ppdet's create() hands the live config list to __init__.
    cfg_list = [1, 2]
    model = RTDETRResNet(depth=18, return_idx=cfg_list)
    model.return_idx.append(3)
    assert cfg_list == [1, 2]


def test_sync_bn_is_plain_bn_without_data_parallel():
    model = RTDETRResNet(depth=18, norm_type='sync_bn', freeze_norm=False)
    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    assert norms and all(type(m) is paddle.nn.BatchNorm2D for m in norms)
    assert model_layout(model) == reference_layout('rtdetr_r18vd_keys.txt', 'backbone.')


@pytest.mark.parametrize('kwargs, message', [
    (dict(depth=152), 'depth must be one of [18, 34, 50, 101], got 152'),
    (dict(variant='e'), "variant must be 'a', 'b', 'c' or 'd', got 'e'"),
    (dict(norm_type='gn'), "norm_type must be 'bn' or 'sync_bn', got 'gn'"),
    (dict(num_stages=5), 'num_stages must be in [1, 4], got 5'),
    (dict(lr_mult_list=[1.0]), 'lr_mult_list must have 4 entries, got 1'),
    (dict(num_stages=2, return_idx=[0, 2]), 'return_idx [0, 2] out of range for num_stages=2'),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError) as info:
        RTDETRResNet(**kwargs)
    assert str(info.value) == message


def test_registered_with_options_in_schema():
    schema = global_config['RTDETRResNet'].schema
    for key in ('depth', 'variant', 'freeze_at', 'freeze_stem_only', 'return_idx', 'lr_mult_list'):
        assert key in schema, key
    assert schema['freeze_stem_only'].default is False
    assert schema['variant'].default == 'd'
    # The class docstring's Args feed ppdet's config schema.
    assert 'stem' in schema['freeze_stem_only'].doc
