"""The export forms of Mask-RT-DETR's resizes against the dygraph ones (F.interpolate, the official arithmetic).

- `BilinearResize` after `convert_to_deploy()` (two matrix products, for Paddle Inference's oneDNN) against
  F.interpolate, by a factor and to sizes that are not multiples;
- `batch_resize` (matrix products over the batch, the traced post-process) against `resize_each_image` (one
  F.interpolate per image), for the 'origin' decoding (the whole mask map) and the 'pad' one (a crop per image).
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from ppdet_rtdetr.modeling.mask_postprocess import batch_resize, resize_each_image
from ppdet_rtdetr.modeling.resize import BilinearResize, bilinear_matrix


def test_bilinear_matrix_rows_are_interpolation_weights():
    # 3 -> 5 pixels: source coordinates max(0, (i + 0.5) * 0.6 - 0.5) = 0, 0.4, 1.0, 1.6, 2.2 -> clamp at 2
    want = np.array([[1, 0, 0], [0.6, 0.4, 0], [0, 1, 0], [0, 0.4, 0.6], [0, 0, 1]], 'float32')
    np.testing.assert_allclose(bilinear_matrix(5, 3).numpy(), want, rtol=0, atol=1e-6)


def test_deploy_resize_equals_interpolate():
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.randn(2, 3, 5, 7).astype('float32'))
    plain, deploy = BilinearResize(scale_factor=2), BilinearResize(scale_factor=2)
    deploy.convert_to_deploy()
    want = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    np.testing.assert_array_equal(plain(x).numpy(), want.numpy())  # before conversion: F.interpolate itself
    err = float((deploy(x) - want).abs().max())
    assert err < 1e-5, f'2x: max err {err:.2e}'
    for h, w in [(9, 13), (17, 5), (5, 7)]:
        like = paddle.zeros([1, 1, h, w])
        want = F.interpolate(x, size=[h, w], mode='bilinear', align_corners=False)
        got = deploy(x, like=like)
        assert got.shape == want.shape
        err = float((got - want).abs().max())
        assert err < 1e-5, f'to {h}x{w}: max err {err:.2e}'


def _compare_pastes(masks, crop_hw, out_hw):
    max_hw = out_hw.max(0)
    want = resize_each_image(masks, crop_hw.astype('int32'), out_hw, max_hw).numpy()
    got = batch_resize(masks, crop_hw.astype('float32'), out_hw.astype('float32'), max_hw).numpy()
    assert got.shape == want.shape == (masks.shape[0], masks.shape[1]) + tuple(max_hw.numpy())
    for i, (h, w) in enumerate(out_hw.numpy()):
        err = np.abs(got[i, :, :h, :w] - want[i, :, :h, :w]).max()
        assert err < 1e-4, f'image {i} ({h}x{w}): max err {err:.2e}'
        assert (want[i, :, h:] == 0).all() and (want[i, :, :, w:] == 0).all()


def test_batch_paste_equals_per_image_interpolate():
    rng = np.random.RandomState(1)
    masks = paddle.to_tensor(rng.randn(3, 4, 16, 24).astype('float32') * 5)
    out_hw = paddle.to_tensor([[120, 200], [64, 96], [31, 17]], 'int32')  # up, equal ratio, down
    _compare_pastes(masks, paddle.to_tensor([[16, 24]] * 3, 'int32'), out_hw)
    # 'pad' decoding: each image's region of the padded input, then its original size
    _compare_pastes(masks, paddle.to_tensor([[16, 24], [12, 24], [16, 9]], 'int32'), out_hw)
