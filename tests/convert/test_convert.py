"""PyTorch RT-DETRv2 checkpoints -> .pdparams: full layouts, layer outputs against numpy on the torch weights,
the torch-free .pth reader against torch itself, the CLI, and one clear error per bad file."""
import importlib.util
import os
import sys
import zipfile

import numpy as np
import paddle
import pytest

from conftest import REFERENCE, ROOT, build_from_config

V2 = os.path.join(ROOT, 'configs', 'rtdetrv2')
R18_CFG = os.path.join(V2, 'rtdetrv2_r18vd_120e_coco.yml')
_DTYPES = {'float32': np.float32, 'int64': np.int64, 'bool': np.bool_}


# the layers whose outputs are checked get hashinit weights; zeros elsewhere keep the fixture fast
CHECKED = ('decoder.enc_score_head.', 'decoder.decoder.layers.1.self_attn.', 'backbone.conv1.conv1_1.',
           'encoder.lateral_convs.0.', 'decoder.denoising_class_embed.')


def _torch_state(keys_file, hashed=CHECKED):
    """A torch-layout state dict with the names, shapes and dtypes of a reference key list: hashinit weights
    under the torch names for the `hashed` prefixes, the true 1/4 of num_points_scale ([4, 4, 4]), zeros else."""
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    import hashinit
    state = {}
    with open(os.path.join(REFERENCE, keys_file)) as f:
        for line in f:
            name, shape, dtype = line.rstrip('\n').split('\t')
            shape = tuple(int(d) for d in shape.strip('[]').split(',') if d.strip())
            if name.endswith('num_points_scale'):
                state[name] = np.full(shape, 0.25, np.float32)
            elif name.startswith(hashed) and not hashinit.keep_unchanged(name, dtype == 'float32'):
                state[name] = hashinit.hash_value(name, shape).astype(np.float32)
            else:
                state[name] = np.zeros(shape, _DTYPES[dtype])
    return state


def _model_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def r18():
    """(torch state, converted model in eval mode, Conversion) for the R18 v2 config."""
    from ppdet_rtdetr.convert import convert_state_dict
    torch_state = _torch_state('rtdetrv2_r18vd_torch_keys.txt')
    model = build_from_config(R18_CFG)
    conversion = convert_state_dict(torch_state, _model_state(model))
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in conversion.state.items()})
    model.eval()
    return torch_state, model, conversion


def test_r18_checkpoint_converts_completely_and_loads_with_no_missing_keys(r18):
    torch_state, model, conversion = r18
    assert conversion.complete, conversion.report()
    assert sorted(conversion.dropped) == sorted(
        n for n in torch_state if n.endswith('num_batches_tracked') or n in ('decoder.anchors', 'decoder.valid_mask'))
    missing, unexpected = build_from_config(R18_CFG).set_state_dict(
        {k: paddle.to_tensor(v) for k, v in conversion.state.items()})
    assert missing == [] and unexpected == [], (missing, unexpected)
    # the padding row (index num_classes) of torch's denoising embedding is dropped
    np.testing.assert_array_equal(model.transformer.denoising_class_embed.weight.numpy(),
                                  torch_state['decoder.denoising_class_embed.weight'][:80])


def test_r50_checkpoint_converts_completely(reference_dir):
    from ppdet_rtdetr.convert import convert_state_dict
    model = build_from_config(os.path.join(V2, 'rtdetrv2_r50vd_6x_coco.yml'))
    conversion = convert_state_dict(_torch_state('rtdetrv2_r50vd_torch_keys.txt', hashed=()), _model_state(model))
    assert conversion.complete, conversion.report()


def _linear(x, w, b):
    return x @ w.T + b  # torch layout: w [out, in]


def _conv2d(x, w, stride, pad):
    """Direct convolution: x [n, c, h, w], w [o, c, kh, kw] -> [n, o, h', w']."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]  # [n, c, ho, wo]
            out += np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
    return out


def _bn(x, t, prefix, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - t[prefix + 'running_mean'].reshape(shape)) / np.sqrt(t[prefix + 'running_var'].reshape(shape) + eps)
            * t[prefix + 'weight'].reshape(shape) + t[prefix + 'bias'].reshape(shape))


def _mha(x, t, prefix, nh):
    """torch nn.MultiheadAttention (batch_first) from its packed in_proj [3c, c]: q, k, v in that order."""
    c = x.shape[-1]
    w, b = t[prefix + 'in_proj_weight'], t[prefix + 'in_proj_bias']
    q, k, v = (_linear(x, w[i * c:(i + 1) * c], b[i * c:(i + 1) * c]) for i in range(3))
    split = lambda y: y.reshape(y.shape[0], y.shape[1], nh, c // nh).transpose(0, 2, 1, 3)  # noqa: E731
    logits = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(c // nh)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    out = (attn / attn.sum(-1, keepdims=True)) @ split(v)  # [b, nh, q, c/nh]
    out = out.transpose(0, 2, 1, 3).reshape(x.shape)
    return _linear(out, t[prefix + 'out_proj.weight'], t[prefix + 'out_proj.bias'])


def _check(name, got, want, tol=1e-4):
    err = np.abs(got - want).max()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f'{name}: max err {err:.2e}')


def test_converted_layers_compute_what_the_torch_weights_compute(r18):
    """Linear (transposed), packed self-attention, stem conv + BN (running stats renamed), neck conv + BN."""
    t, model, _ = r18
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 256)).astype('float32')
    with paddle.no_grad():
        _check('enc_score_head', model.transformer.enc_score_head(paddle.to_tensor(x)).numpy(),
               _linear(x, t['decoder.enc_score_head.weight'], t['decoder.enc_score_head.bias']))
        attn = model.transformer.decoder.layers[1].self_attn
        xt = paddle.to_tensor(x)
        _check('decoder self_attn', attn(xt, xt, xt).numpy(), _mha(x, t, 'decoder.decoder.layers.1.self_attn.', 8))

        img = rng.uniform(0, 1, (1, 3, 9, 11)).astype('float32')  # odd, non-square
        p = 'backbone.conv1.conv1_1.'
        want = np.maximum(_bn(_conv2d(img, t[p + 'conv.weight'], 2, 1), t, p + 'norm.'), 0)
        _check('backbone stem conv1_1', model.backbone.conv1.conv1_1(paddle.to_tensor(img)).numpy(), want)

        feat = rng.standard_normal((1, 256, 3, 5)).astype('float32')
        p = 'encoder.lateral_convs.0.'
        y = _bn(_conv2d(feat, t[p + 'conv.weight'], 1, 0), t, p + 'norm.')
        _check('neck lateral conv', model.neck.lateral_convs[0](paddle.to_tensor(feat)).numpy(), y / (1 + np.exp(-y)))


def test_other_points_per_level_and_wrong_model_are_reported_by_name(reference_dir):
    from ppdet_rtdetr.convert import convert_state_dict
    target = _model_state(build_from_config(R18_CFG))
    torch_state = _torch_state('rtdetrv2_r18vd_torch_keys.txt', hashed=())
    points_3_6_3 = np.array([1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3, np.float32)
    torch_state['decoder.decoder.layers.2.cross_attn.num_points_scale'] = points_3_6_3
    conversion = convert_state_dict(torch_state, target)
    assert not conversion.complete and conversion.unmapped == [] and conversion.missing == []
    assert len(conversion.mismatched) == 1 and conversion.mismatched[0].startswith(
        'decoder.decoder.layers.2.cross_attn.num_points_scale -> transformer.decoder.layers.2.cross_attn.'
        'num_points_scale: values [0.3333'), conversion.mismatched

    wrong = convert_state_dict(_torch_state('rtdetrv2_r50vd_torch_keys.txt', hashed=()), target)
    assert 'backbone.res_layers.0.blocks.0.branch2c.conv.weight' in wrong.unmapped
    assert 'decoder.decoder.layers.5.norm3.weight' in wrong.unmapped  # R18 has 3 decoder layers, R50 6
    assert ('backbone.res_layers.0.blocks.0.branch2a.conv.weight -> backbone.res2.res2a.branch2a.conv.weight: '
            'shape [64, 64, 1, 1] (in Paddle layout) but the model has [64, 64, 3, 3]') in wrong.mismatched
    report = wrong.report()
    assert all(n in report for n in wrong.unmapped + wrong.missing)


# ---- with torch: real .pth files -------------------------------------------------------------------------------

def _tool():
    path = os.path.join(ROOT, 'tools', 'convert_torch_weights.py')
    spec = importlib.util.spec_from_file_location('convert_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def r18_pth(r18, tmp_path_factory):
    """The R18 torch state saved by torch.save as the authors' checkpoints are: {'ema': {'module': ...}}."""
    torch = pytest.importorskip('torch', reason='torch is optional; pip install torch==2.13.0 (CPU) to run this')
    import argparse
    import collections
    torch_state, _, _ = r18
    sd = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in torch_state.items())
    path = str(tmp_path_factory.mktemp('pth') / 'rtdetrv2_r18vd.pth')
    # training metadata of a class we never load must not stop the conversion
    torch.save({'ema': {'module': sd, 'updates': 1234}, 'date': '2024-07-01', 'args': argparse.Namespace(lr=1e-4)},
               path)
    return path


def test_reader_equals_torch_load_on_dtypes_and_strided_views(tmp_path):
    torch = pytest.importorskip('torch', reason='torch is optional; pip install torch==2.13.0 (CPU) to run this')
    from ppdet_rtdetr.convert import read_torch_zip
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {'model': {'f32': torch.randn(3, 2), 'i64': torch.tensor(7), 'bool': torch.tensor([True, False]),
                     'f16': torch.randn(5).half(), 'view': base[1:, ::2], 'T': base.t(), 'same_storage': base}}
    path = str(tmp_path / 'x.pth')
    torch.save(obj, path)
    want = torch.load(path, map_location='cpu', weights_only=True)['model']
    got = read_torch_zip(path)['model']
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.numpy().dtype and got[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)


def test_torch_modules_on_the_torch_weights_equal_the_converted_layers(r18):
    """The same checks as above with torch's own MultiheadAttention, Conv2d and BatchNorm2d."""
    torch = pytest.importorskip('torch', reason='torch is optional; pip install torch==2.13.0 (CPU) to run this')
    t, model, _ = r18
    w = lambda name: torch.from_numpy(t[name])  # noqa: E731
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 256)).astype('float32')
    mha = torch.nn.MultiheadAttention(256, 8, batch_first=True).eval()
    p = 'decoder.decoder.layers.1.self_attn.'
    mha.load_state_dict({k: w(p + k) for k in ('in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias')})
    img = rng.uniform(0, 1, (1, 3, 9, 11)).astype('float32')
    p = 'backbone.conv1.conv1_1.'
    conv = torch.nn.Conv2d(3, 32, 3, 2, 1, bias=False).eval()
    conv.load_state_dict({'weight': w(p + 'conv.weight')})
    bn = torch.nn.BatchNorm2d(32).eval()
    bn.load_state_dict({k: w(p + 'norm.' + k) for k in ('weight', 'bias', 'running_mean', 'running_var')},
                       strict=False)
    xt = paddle.to_tensor(x)
    with torch.no_grad(), paddle.no_grad():
        _check('decoder self_attn', model.transformer.decoder.layers[1].self_attn(xt, xt, xt).numpy(),
               mha(*[torch.from_numpy(x)] * 3, need_weights=False)[0].numpy())
        _check('backbone stem conv1_1', model.backbone.conv1.conv1_1(paddle.to_tensor(img)).numpy(),
               torch.relu(bn(conv(torch.from_numpy(img)))).numpy())


def test_cli_converts_the_authors_checkpoint_layout(r18, r18_pth, tmp_path, capsys):
    _, _, conversion = r18
    out = str(tmp_path / 'r18.pdparams')
    assert _tool().main(['--src', r18_pth, '--config', R18_CFG, '--out', out]) == 0
    assert 'saved' in capsys.readouterr().out
    saved = paddle.load(out)
    assert set(saved) == set(conversion.state)
    for k, v in conversion.state.items():
        np.testing.assert_array_equal(np.asarray(saved[k]), v, err_msg=k)


def test_partial_checkpoint_is_refused_unless_allowed(r18, r18_pth, tmp_path, capsys):
    torch = pytest.importorskip('torch')
    from ppdet_rtdetr.convert import read_torch_zip
    state = {k: torch.from_numpy(v) for k, v in read_torch_zip(r18_pth)['ema']['module'].items()}
    del state['decoder.enc_score_head.bias'], state['backbone.conv1.conv1_1.norm.running_var']
    src, out = str(tmp_path / 'partial.pth'), str(tmp_path / 'partial.pdparams')
    torch.save({'model': state}, src)
    tool = _tool()
    assert tool.main(['--src', src, '--config', R18_CFG, '--out', out]) == 1 and not os.path.exists(out)
    err = capsys.readouterr().err
    assert f'error: {src}: does not fit {R18_CFG}' in err
    for name in ('transformer.enc_score_head.bias', 'backbone.conv1.conv1_1.norm._variance'):
        assert f'missing (not in the checkpoint): {name}' in err
    assert tool.main(['--src', src, '--config', R18_CFG, '--out', out, '--allow_partial']) == 0
    assert 'saved' in capsys.readouterr().out and len(paddle.load(out)) == len(r18[2].state) - 2


def _truncated_copy(src, dst):
    with open(src, 'rb') as f:
        dst.write_bytes(f.read()[:os.path.getsize(src) // 2])
    return str(dst)


def _expect_one_error(tmp_path, capsys, path, why):
    assert _tool().main(['--src', path, '--config', R18_CFG, '--out', str(tmp_path / 'x.pdparams')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {path}: {why}'), err


def test_bad_files_give_one_error_naming_the_file(tmp_path, capsys):
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    archive = tmp_path / 'other.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        z.writestr('readme.txt', 'hello' * 1000)
    cases = {str(tmp_path / 'absent.pth'): 'no such file',
             str(text): 'not a PyTorch zip checkpoint',
             str(archive): 'a zip file, but not a PyTorch checkpoint (no data.pkl)',
             _truncated_copy(archive, tmp_path / 'cut.zip'): 'not a PyTorch zip checkpoint, or truncated'}
    for path, why in cases.items():
        _expect_one_error(tmp_path, capsys, path, why)


def test_truncated_checkpoint_gives_one_error_naming_the_file(r18_pth, tmp_path, capsys):
    _expect_one_error(tmp_path, capsys, _truncated_copy(r18_pth, tmp_path / 'cut.pth'),
                      'not a PyTorch zip checkpoint, or truncated')
