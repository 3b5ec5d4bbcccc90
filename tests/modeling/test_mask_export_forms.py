"""The export forms of Mask-RT-DETR's resizes against the dygraph ones (F.interpolate, the official arithmetic).

- `BilinearResize` after `convert_to_deploy()` (two matrix products, for Paddle Inference's oneDNN) against
  F.interpolate, by a factor and to sizes that are not multiples;
- `batch_resize` (matrix products over the batch, the traced post-process) against `resize_each_image` (one
  F.interpolate per image), for the 'origin' decoding (the whole mask map) and the 'pad' one (a crop per image);
- the whole post-process traced for any batch and input size against dygraph, for both decodings.
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from paddle.static import InputSpec

from ppdet_rtdetr.modeling.mask_postprocess import (BBOX_DECODE_TYPES, RTDETRMaskPostProcess, batch_resize,
                                                    resize_each_image)
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


def test_traced_postprocess_equals_dygraph_at_any_batch_and_size():
    """The post-process traced with the batch and the input size unknown (as tools/export_model.py traces it),
    for both decodings: boxes and scores as dygraph's, masks with IoU >= 0.99 per instance."""
    rng = np.random.RandomState(2)
    n, k, h4, w4 = 12, 3, 16, 24
    head = [paddle.to_tensor(rng.rand(2, n, 4).astype('float32') * 0.5 + 0.25),
            paddle.to_tensor(rng.randn(2, n, k).astype('float32')),
            paddle.to_tensor(rng.randn(2, n, h4, w4).astype('float32') * 5)]
    image = paddle.zeros([2, 3, 4 * h4, 4 * w4])
    im_shape = paddle.to_tensor([[64., 96.], [48., 96.]])  # the second image padded at the bottom ('pad')
    scale_factor = paddle.to_tensor([[0.5, 0.8], [0.4, 0.3]])
    for decode in BBOX_DECODE_TYPES:
        post_process = RTDETRMaskPostProcess(num_classes=k, num_top_queries=5, bbox_decode_type=decode,
                                             use_avg_mask_score=decode == 'pad')

        def run(boxes, logits, masks, im_shape, scale_factor, image):
            return post_process((boxes, logits, masks), im_shape, scale_factor, image.shape[2:])

        spec = [InputSpec([None, n, 4], 'float32'), InputSpec([None, n, k], 'float32'),
                InputSpec([None, n, None, None], 'float32'), InputSpec([None, 2], 'float32'),
                InputSpec([None, 2], 'float32'), InputSpec([None, 3, None, None], 'float32')]
        traced = paddle.jit.to_static(run, input_spec=spec, full_graph=True)
        want = run(*head, im_shape, scale_factor, image)
        got = traced(*head, im_shape, scale_factor, image)
        np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-4, err_msg=decode)
        g, w = got[2].numpy().astype(bool), want[2].numpy().astype(bool)
        assert g.shape == w.shape == (10, 128, 320) and w.sum() > 0, (decode, g.shape)
        iou = (g & w).sum((1, 2)) / np.maximum((g | w).sum((1, 2)), 1)
        assert iou.min() >= 0.99, f'{decode}: mask IoU {iou.min():.4f}'
