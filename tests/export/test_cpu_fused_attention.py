"""export.cpu_fused_attention: the deformable-attention sampling as one compiled CPU operator (ppdet_rtdetr.native.cpu_ops).

The operator against `ms_deform_attn_core` (grid_sample path) bit for bit, a whole model switched to it, and
what refuses it: ONNX, a GPU device, a missing library, the discrete sampler, a failed build. The export itself
runs in tests/export/test_engines.py and tests/deploy/test_deploy.py (case `dynamic_cpu_fused`: Paddle
Inference with and without oneDNN against dygraph, the deploy CLI); here a deploy-only process (no ppdet, no
ppdet_rtdetr) registers the library from the folder.
"""
import json
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import ROOT, TINY_CFG, build_from_config
from helpers.export_utils import ExportCase, assert_same_detections, paddle_infer  # noqa: F401  (fixture)
from ppdet_rtdetr.native import cpu_ops as ops
from ppdet_rtdetr.export import export_onnx
from ppdet_rtdetr.modeling.deformable_attn import MSDeformableAttention, ms_deform_attn_core

FUSED_CASE = 'dynamic_cpu_fused'


@pytest.mark.parametrize('shapes, points, b, nh, hc, q', [
    ([(20, 20), (10, 10), (5, 5)], [4, 4, 4], 1, 8, 32, 50),          # RT-DETR's layout, square maps
    ([(7, 9), (4, 5), (2, 3), (1, 2)], [3, 6, 2, 1], 2, 4, 16, 11),  # v2 per-level points, 4 levels, batch 2
], ids=['rtdetr', 'v2_points'])
def test_operator_is_bit_equal_to_the_grid_sample_path(shapes, points, b, nh, hc, q):
    rng = np.random.default_rng(0)
    total = sum(points)
    value = paddle.to_tensor(rng.normal(size=(b, sum(h * w for h, w in shapes), nh, hc)).astype('float32'))
    # a tenth of the points off the map on each side: corners read zeros there
    locs = paddle.to_tensor(rng.uniform(-0.1, 1.1, size=(b, q, nh, total, 2)).astype('float32'))
    weights = paddle.nn.functional.softmax(paddle.to_tensor(rng.normal(size=(b, q, nh, total)).astype('float32')))
    want = ms_deform_attn_core(value, shapes, locs, weights, points).numpy()
    got = ops.ms_deform_attn_cpu(value, shapes, locs, weights, points).numpy()
    assert got.shape == (b, q, nh * hc)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0.1  # not a comparison of zeros


def test_operator_refuses_other_dtypes():
    value, locs = paddle.ones([1, 4, 1, 2], 'float64'), paddle.full([1, 1, 1, 1, 2], 0.5)
    with pytest.raises(Exception, match='ppdet_rtdetr_ms_deform_attn: Value, Locations and Weights must be float32'):
        ops.ms_deform_attn_cpu(value, [(2, 2)], locs, paddle.ones([1, 1, 1, 1]), [1])


def test_switched_model_gives_the_same_outputs():
    """Every MSDeformableAttention of the tiny model on the operator: eval outputs bit-equal."""
    paddle.seed(0)
    model = build_from_config(TINY_CFG)
    model.eval()
    rng = np.random.default_rng(1)
    inputs = {'image': paddle.to_tensor(rng.uniform(size=(2, 3, 64, 96)).astype('float32')),
              'im_shape': paddle.to_tensor([[64., 96.]] * 2), 'scale_factor': paddle.to_tensor([[1., 1.]] * 2)}
    with paddle.no_grad():
        want = {k: v.numpy() for k, v in model(inputs).items()}
        layers = [m for m in model.sublayers() if isinstance(m, MSDeformableAttention)]
        assert layers
        for layer in layers:
            layer.fuse_cpu_sampling()
        got = {k: v.numpy() for k, v in model(inputs).items()}
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_discrete_sampler_is_refused():
    layer = MSDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=2, method='discrete')
    with pytest.raises(ValueError, match=r"^export.cpu_fused_attention: the CPU operator is the default \(bilinear\) "
                                         r"sampler; this model's cross_attn_method is 'discrete'$"):
        layer.fuse_cpu_sampling()


def test_failed_build_names_the_option_and_shows_the_compiler(monkeypatch, tmp_path):
    """A source that does not compile (a stand-in for a machine without a compiler), built in its own folder."""
    broken = tmp_path / 'broken.cc'
    broken.write_text('#include "paddle/extension.h"\nthis is not C++;\n')
    monkeypatch.setenv('PADDLE_EXTENSION_DIR', str(tmp_path / 'build'))
    monkeypatch.setattr(ops, '_SOURCE', str(broken))
    monkeypatch.setattr(ops, 'LIBRARY_NAME', 'ppdet_rtdetr_broken')
    monkeypatch.setattr(ops, '_library', None)
    with pytest.raises(RuntimeError, match=r"(?s)^export.cpu_fused_attention needs ppdet_rtdetr's CPU operator, built "
                                           rf"from {broken} with a C\+\+ compiler \(g\+\+\) and Paddle's headers; the "
                                           r"build failed\. .*Build output:\n.*broken.cc.*error"):
        ops.load_cpu_ops()


def test_a_second_copy_of_the_library_is_not_registered(tmp_path):
    """Paddle aborts the process when the same operators register twice: two folders' copies of the library
    and the build's own, in one process, in both orders."""
    case = ExportCase(FUSED_CASE)
    copy = str(tmp_path / 'copy')
    shutil.copytree(case.model_dir, copy)
    first_folders = ("register_custom_ops(%r); register_custom_ops(%r); ops.load_cpu_ops()" % (case.model_dir, copy))
    first_build = ("ops.load_cpu_ops(); register_custom_ops(%r); register_custom_ops(%r)" % (case.model_dir, copy))
    for order in (first_folders, first_build):
        code = ("import sys; sys.path.insert(0, %r); from preprocess import register_custom_ops\n"
                "from ppdet_rtdetr.native import cpu_ops as ops\n%s\n"
                "import paddle; v = paddle.ones([1, 4, 2, 2]); p = paddle.full([1, 1, 2, 1, 2], 0.5)\n"
                "print(ops.ms_deform_attn_cpu(v, [(2, 2)], p, paddle.ones([1, 1, 2, 1]), [1]).numpy().tolist())\n"
                % (os.path.join(ROOT, 'deploy', 'python'), order))
        proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode == 0, proc.stderr[-3000:]
        # the centre of a 2x2 map of ones, for each of 2 heads x 2 channels
        assert proc.stdout.strip().splitlines()[-1] == '[[[1.0, 1.0, 1.0, 1.0]]]'


def test_onnx_is_refused():
    case = ExportCase(FUSED_CASE)
    infer_cfg = os.path.join(case.model_dir, 'infer_cfg.yml')
    with pytest.raises(ValueError, match=rf"^{infer_cfg} uses ppdet_rtdetr's compiled CPU operator "
                                         r"\(export.cpu_fused_attention\), which ONNX has no form of: export "
                                         r"without that option for ONNX"):
        export_onnx(case.model_dir)
    assert not os.path.exists(os.path.join(case.model_dir, 'model.onnx'))


@pytest.mark.parametrize('value, message', [
    ('True', "ValueError: --onnx: this config uses ppdet_rtdetr's compiled CPU operator "
             "(export.cpu_fused_attention)"),
    ('maybe', "ValueError: export.cpu_fused_attention must be True or False, got 'maybe'"),
], ids=['onnx', 'bad_value'])
def test_export_tool_refuses_before_writing(tmp_path, value, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-c', TINY_CFG,
                           '--onnx', '--output_dir', str(tmp_path / 'out'),
                           '-o', f'export.cpu_fused_attention={value}'],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / 'out').exists()


def test_deploy_refuses_gpu_another_paddle_and_a_missing_library(paddle_infer, tmp_path):
    import paddle
    import yaml
    import preprocess  # deploy/python, on sys.path with the paddle_infer fixture
    case = ExportCase(FUSED_CASE)
    with open(os.path.join(case.model_dir, 'infer_cfg.yml')) as f:
        infer_cfg = yaml.safe_load(f)
    assert infer_cfg['custom_op_paddle_version'] == paddle.__version__
    other = tmp_path / 'other_paddle'
    other.mkdir()
    shutil.copy(os.path.join(case.model_dir, 'ppdet_rtdetr_cpu_ops.so'), str(other))
    (other / 'infer_cfg.yml').write_text(yaml.safe_dump(dict(infer_cfg, custom_op_paddle_version='3.0.0')))
    with pytest.raises(ValueError, match=rf'^{other}/ppdet_rtdetr_cpu_ops.so was compiled for Paddle 3.0.0 '
                                         rf'\(infer_cfg.yml custom_op_paddle_version\), this process runs Paddle '
                                         rf'{re.escape(paddle.__version__)}: deploy with Paddle 3.0.0, or export again'):
        preprocess.register_custom_ops(str(other))
    with pytest.raises(ValueError, match=rf'^{case.model_dir} was exported with export.cpu_fused_attention: its '
                                         r'operator ppdet_rtdetr_cpu_ops.so runs on the CPU only, not on GPU'):
        preprocess.register_custom_ops(case.model_dir, 'GPU')
    folder = tmp_path / 'no_library'
    folder.mkdir()
    (folder / 'infer_cfg.yml').write_text(open(os.path.join(case.model_dir, 'infer_cfg.yml')).read())
    with pytest.raises(FileNotFoundError, match=rf'^{folder}/ppdet_rtdetr_cpu_ops.so not found: {folder}/infer_cfg.yml '
                                                r'names it in custom_op_library'):
        preprocess.register_custom_ops(str(folder))


def test_deploy_only_process_registers_the_library(tmp_path):
    """deploy/python/infer.py in a process that cannot import ppdet or ppdet_rtdetr runs the export (twice in
    one process: registering the library again is harmless) and writes the dygraph detections."""
    case = ExportCase(FUSED_CASE)
    blocker = tmp_path / 'blocker'
    blocker.mkdir()
    for name in ('ppdet', 'ppdet_rtdetr'):
        (blocker / f'{name}.py').write_text(f"raise ImportError('{name} must not be needed to deploy')\n")
    code = ("import sys; sys.argv[0] = 'infer.py'; import infer\n"
            "for out in sys.argv[1:]:\n"
            "    infer.main(['--model_dir', %r, '--image_dir', %r, '--threshold', '0', '--output_dir', out])\n"
            % (case.model_dir, case.images_dir))
    outs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.path.join(ROOT, 'deploy', 'python')]))
    proc = subprocess.run([sys.executable, '-c', code] + outs, capture_output=True, text=True, env=env,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for out in outs:
        with open(os.path.join(out, 'results.json')) as f:
            results = json.load(f)
        assert len(results) == 3
        for r in results:
            name = os.path.splitext(os.path.basename(r['image']))[0]
            det = np.array([[d['class_id'], d['score']] + d['bbox'] for d in r['detections']], 'float32')
            assert_same_detections(det, case.ref[f'file_{name}'], what=f'deploy-only {name}')


def test_option_value_and_training_are_refused():
    from conftest import fresh_config
    from ppdet_rtdetr.export import build_export_model
    cfg = fresh_config(TINY_CFG, export={'cpu_fused_attention': 'yes'})
    with pytest.raises(ValueError, match=r"^export.cpu_fused_attention must be True or False, got 'yes'$"):
        build_export_model(cfg)
    layer = MSDeformableAttention(embed_dim=32, num_heads=4, num_levels=1, num_points=2)
    layer.fuse_cpu_sampling()
    query, value = paddle.rand([1, 3, 32]), paddle.rand([1, 16, 32])
    boxes = paddle.full([1, 3, 1, 4], 0.5)
    with pytest.raises(RuntimeError, match=r'^MSDeformableAttention: the compiled CPU sampling has no gradient; '
                                           r'it is for inference \(call eval\(\)\)$'):
        layer(query, boxes, value, [(4, 4)])
    layer.eval()  # in eval it samples, as the grid_sample path does
    plain = MSDeformableAttention(embed_dim=32, num_heads=4, num_levels=1, num_points=2)
    plain.set_state_dict(layer.state_dict())
    plain.eval()
    np.testing.assert_array_equal(layer(query, boxes, value, [(4, 4)]).numpy(),
                                  plain(query, boxes, value, [(4, 4)]).numpy())
