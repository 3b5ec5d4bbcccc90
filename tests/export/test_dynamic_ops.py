"""The shape-dependent pieces of a dynamic-size export (position embedding at the real width 256, anchors and
valid mask of three levels, nearest upsampling), traced for any H x W and run at several sizes in Paddle
Inference without and with oneDNN and in onnxruntime, against dygraph.

The tiny export cases (hidden 32) are not sensitive enough to show an embedding error: oneDNN once computed
cos of sin(x) here (errors up to 2) while their outputs still matched.
"""
import os

import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from helpers.export_utils import ROOT  # noqa: F401  (puts the repository first on sys.path)
from ppdet_rtdetr.modeling.anchors import generate_anchors
from ppdet_rtdetr.modeling.hybrid_encoder import sincos_position_embedding, upsample_nearest

# feature-map sizes of stride 8 (480x800, 352x608, ...), and odd ones (an input that is no multiple of 32)
SIZES = [(60, 100), (44, 76), (92, 68), (8, 12), (45, 77), (9, 6)]


class _ShapeOps(paddle.nn.Layer):
    """x [b, c, h, w] -> (position embedding of the h/4 x w/4 level, anchors and valid mask of the levels
    h x w, h/2 x w/2, h/4 x w/4, the top-left ceil(h/2) x ceil(w/2) of x (the size of the level a stride-2
    convolution makes) upsampled to h x w)."""

    def forward(self, x):
        h, w = x.shape[2:]  # 0-D tensors when traced for any size
        anchors, valid = generate_anchors([(h, w), (h // 2, w // 2), (h // 4, w // 4)])
        pos = sincos_position_embedding(h // 4, w // 4, 256, 10000.)
        return pos, anchors, valid.astype('float32'), upsample_nearest(x[:, :, :(h + 1) // 2, :(w + 1) // 2], (h, w))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    layer = _ShapeOps()
    path = str(tmp_path_factory.mktemp('shape_ops') / 'model')
    static = paddle.jit.to_static(layer, input_spec=[InputSpec([None, 4, None, None], 'float32', 'x')],
                                  full_graph=True)
    paddle.jit.save(static, path)
    return layer, os.path.dirname(path)


def _compare(got, want, what):
    for name, g, r in zip(('pos_embed', 'anchors', 'valid_mask', 'upsampled'), got, want):
        assert g.shape == r.shape, f'{what} {name}: shape {g.shape} != {r.shape}'
        finite = np.isfinite(r)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=f'{what} {name}: invalid anchors differ')
        err = float(np.abs(np.where(finite, g - r, 0)).max())
        assert err < 1e-5, f'{what} {name}: max err {err:.2e}'


def _reference(layer, x):
    with paddle.no_grad():
        return [t.numpy() for t in layer(paddle.to_tensor(x))]


@pytest.mark.parametrize('mkldnn', [False, True], ids=['plain', 'mkldnn'])
def test_paddle_inference_computes_them_at_every_size(exported, mkldnn):
    from paddle import inference
    layer, model_dir = exported
    config = inference.Config(os.path.join(model_dir, 'model.json'), os.path.join(model_dir, 'model.pdiparams'))
    config.disable_gpu()
    config.disable_glog_info()
    config.enable_mkldnn() if mkldnn else config.disable_mkldnn()
    predictor = inference.create_predictor(config)
    for h, w in SIZES:  # one predictor for all sizes
        x = np.random.RandomState(h).rand(1, 4, h, w).astype('float32')
        predictor.get_input_handle('x').copy_from_cpu(x)
        predictor.run()
        got = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
        _compare(got, _reference(layer, x), f"paddle{'-mkldnn' if mkldnn else ''} {h}x{w}")


def test_onnxruntime_computes_them_at_every_size(exported):
    pytest.importorskip('paddle2onnx', reason='paddle2onnx is not installed')
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    from ppdet_rtdetr.export import export_onnx
    layer, model_dir = exported
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(export_onnx(model_dir), options, providers=['CPUExecutionProvider'])
    for h, w in SIZES:
        x = np.random.RandomState(h).rand(1, 4, h, w).astype('float32')
        _compare(session.run(None, {'x': x}), _reference(layer, x), f'onnxruntime {h}x{w}')
