"""Export-tool pieces that need no export: the size rules and the oneDNN-safe upsampling."""
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from helpers.export_utils import ROOT

sys.path.insert(0, ROOT)

from ppdet_rtdetr.export import resolve_export_size, trt_shape_range  # noqa: E402
from ppdet_rtdetr.modeling.hybrid_encoder import upsample_nearest  # noqa: E402


@pytest.mark.parametrize('hw, size', [((2, 3), (4, 6)), ((4, 4), (7, 8)), ((5, 3), (9, 5)), ((13, 17), (25, 33)),
                                      ((20, 20), (40, 40)), ((3, 2), (9, 4))])
def test_upsample_nearest_equals_interpolate(hw, size):
    """Integer factors (reshape + tile) and the others (index gathers): same values and same gradient."""
    x = paddle.to_tensor(np.random.RandomState(0).rand(2, 3, *hw).astype('float32'), stop_gradient=False)
    seed = paddle.to_tensor(np.random.RandomState(1).rand(2, 3, *size).astype('float32'))
    got = upsample_nearest(x, size)
    want = F.interpolate(x, size=list(size), mode='nearest')
    assert got.shape == want.shape and (got.numpy() == want.numpy()).all(), \
        f'max err {np.abs(got.numpy() - want.numpy()).max()}'
    grad_got, = paddle.grad((got * seed).sum(), x)
    grad_want, = paddle.grad((want * seed).sum(), x)
    np.testing.assert_allclose(grad_got.numpy(), grad_want.numpy(), rtol=1e-6, atol=1e-6)


class _Upsample(paddle.nn.Layer):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return upsample_nearest(x, self.size)


@pytest.mark.parametrize('hw, size', [((20, 20), (40, 40)), ((5, 3), (10, 9)), ((4, 4), (7, 8))])
def test_traced_upsample_nearest_equals_interpolate(hw, size):
    """The static graph's form (integer factors repeat in NHWC order, see _repeat_pixels) and the gathers."""
    x = np.random.RandomState(2).rand(2, 3, *hw).astype('float32')
    static = paddle.jit.to_static(_Upsample(size), full_graph=True,
                                  input_spec=[paddle.static.InputSpec([None, 3, *hw], 'float32')])
    got = static(paddle.to_tensor(x)).numpy()
    want = F.interpolate(paddle.to_tensor(x), size=list(size), mode='nearest').numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('image_shape', [[3, -1, -1], [3, -1, 640]])
def test_dynamic_size_unsets_eval_size(image_shape):
    """-1 on an axis: the modules are built without baked anchors / position embeddings."""
    from ppdet.core import workspace
    assert resolve_export_size({'eval_size': [640, 640]}, image_shape) == image_shape[1:]
    assert workspace.global_config['eval_size'] is None
    assert resolve_export_size({'eval_size': [640, 640]}) == [640, 640]
    assert workspace.global_config['eval_size'] == [640, 640]


@pytest.mark.parametrize('bad', [[3, 0, 640], [3, -2, 640]])
def test_invalid_size_is_refused(bad):
    with pytest.raises(ValueError, match=r'must be positive integers, or -1 for a dynamic axis'):
        resolve_export_size({'eval_size': None}, bad)


def test_trt_shape_range_defaults_and_checks():
    assert trt_shape_range([640, 640], 32) == {'min': [320, 320], 'opt': [640, 640], 'max': [1280, 1280]}
    assert trt_shape_range([64, 96], 32, max_size=[96, 96]) == {'min': [32, 64], 'opt': [64, 96], 'max': [96, 96]}
    with pytest.raises(ValueError, match=r'min <= opt <= max on H and W, got min \[700, 320\], opt \[640, 640\]'):
        trt_shape_range([640, 640], 32, min_size=[700, 320])
    # H dynamic, W fixed at 640: W stays 640 in the whole range
    assert trt_shape_range([640, 640], 32, size=[-1, 640]) == {'min': [320, 640], 'opt': [640, 640],
                                                                'max': [1280, 640]}
    with pytest.raises(ValueError, match=r'varies W, which this export fixes at 640'):
        trt_shape_range([640, 640], 32, max_size=[800, 800], size=[-1, 640])


def test_no_size_anywhere_is_refused():
    with pytest.raises(ValueError, match=r'no export size: pass --image_shape 3 H W or set eval_size'):
        resolve_export_size({'eval_size': None, 'TestReader': {}})


def test_image_shape_must_be_three_numbers():
    with pytest.raises(ValueError, match=r'--image_shape must be 3 H W, got \[480, 640\]'):
        resolve_export_size({'eval_size': [640, 640]}, [480, 640])


def test_repeated_o_options_are_merged():
    import importlib.util
    spec = importlib.util.spec_from_file_location('export_model_tool', f'{ROOT}/tools/export_model.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(['-c', 'x.yml', '-o', 'weights=w', '--image_shape', '3', '32', '64', '-o', 'trt=True',
                            'eval_size=[32,64]', '--onnx', '--trt_max_size', '96', '128'])
    assert args.trt_max_size == [96, 128] and args.trt_min_size is None
    assert args.opt == {'weights': 'w', 'trt': True, 'eval_size': [32, 64]}
    assert args.image_shape == [3, 32, 64] and args.onnx
