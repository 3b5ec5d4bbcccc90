"""Mask-RT-DETR post-process: RT-DETR's top-k boxes plus the binary masks of the same queries, at the original
image size, for any batch size (the official ``DETRPostProcess`` asserts a batch of 1 when it returns masks)."""
import paddle
import paddle.nn.functional as F
from ppdet.core.workspace import register

from .postprocess import RTDETRPostProcess
from .resize import bilinear_matrix, matrix_resize, scalar_tensor

__all__ = ['RTDETRMaskPostProcess', 'resize_each_image', 'batch_resize']

BBOX_DECODE_TYPES = ('origin', 'pad')


@register
class RTDETRMaskPostProcess(RTDETRPostProcess):
    """Top-K (query, class) pairs with their boxes and binary masks.

    Args:
        num_classes (int), num_top_queries (int), use_focal_loss (bool): as `RTDETRPostProcess`.
        mask_stride (int): stride of the predicted masks relative to the network input (4).
        mask_threshold (float): a pixel is in the mask where sigmoid(mask logit) > mask_threshold.
        use_avg_mask_score (bool): multiply each score by the mean mask probability inside its binary mask.
        bbox_decode_type (str): 'origin': boxes and masks are relative to the resized image, which is the whole
            network input (the official eval reader resizes without padding); the masks are resized from stride 4
            straight to the original size. 'pad': the network input is the resized image padded at the bottom/right
            to pad_shape; boxes are scaled by pad_shape / im_shape too, and the masks are upsampled by mask_stride,
            cropped to im_shape, then resized to the original size.

    __call__(head_out = (boxes [b, n, 4] sigmoid cxcywh, logits [b, n, k], masks [b, n, h4, w4] logits),
    im_shape [b, 2] (h, w) of the resized images, scale_factor [b, 2] (h, w) resized / original, pad_shape (h, w)
    of the network input, read by 'pad' only) -> (bbox [b*K, 6] float32 rows (class, score, x1, y1, x2, y2) in
    original-image pixels, bbox_num int32 [b] all K, mask int32 [b*K, H, W] of {0, 1}, -1 padding). H, W are the
    largest original height and width in the batch: image i's masks fill [:h_i, :w_i] and are -1 beyond (ppdet's
    Mask R-CNN convention for batches); with one image they are exactly its size, as the official output.

    Sizes stay tensors, so the same code runs in an exported graph. The resize to each image's size is
    `resize_each_image` (a loop of F.interpolate, the official arithmetic) in dygraph; in a traced graph
    (tools/export_model.py, dynamic batch) it is `batch_resize`, matrix products over the batch with the same
    bilinear weights (equal up to float rounding).

    The official code passes ``image[2:].shape`` as pad_shape (a slice of the batch, not of the shape); here the
    architecture passes the input's (h, w), which is what 'pad' needs. With 'origin' (every official config)
    pad_shape is not read, so the bug had no effect there.
    """
    __shared__ = ['num_classes', 'use_focal_loss']

    def __init__(self, num_classes=80, num_top_queries=100, use_focal_loss=True, mask_stride=4, mask_threshold=0.5,
                 use_avg_mask_score=False, bbox_decode_type='origin'):
        super().__init__(num_classes, num_top_queries, use_focal_loss)
        if bbox_decode_type not in BBOX_DECODE_TYPES:
            raise ValueError(f'RTDETRMaskPostProcess: bbox_decode_type {bbox_decode_type!r} is not one of '
                             f'{BBOX_DECODE_TYPES}')
        self.mask_stride = mask_stride
        self.mask_threshold = mask_threshold
        self.use_avg_mask_score = use_avg_mask_score
        self.bbox_decode_type = bbox_decode_type

    def __call__(self, head_out, im_shape, scale_factor, pad_shape=None):
        boxes, logits, masks = head_out
        origin_hw = paddle.floor(im_shape / scale_factor + 0.5)  # [b, 2]
        box_scale = self._box_scale(im_shape, scale_factor)
        if self.bbox_decode_type == 'pad':
            if pad_shape is None:
                raise ValueError("RTDETRMaskPostProcess: bbox_decode_type 'pad' needs pad_shape, the (h, w) of the "
                                 "network input")
            # ints, or shape tensors in a graph traced for any input size
            pad_hw = paddle.stack([scalar_tensor(v, im_shape.dtype) for v in pad_shape[:2]])
            # boxes normalised over the padded input: scale to the original image and its padding
            box_scale = box_scale * paddle.concat([pad_hw[1:], pad_hw[:1]] * 2) / paddle.concat(
                [im_shape[:, 1:2], im_shape[:, 0:1]] * 2, axis=-1).unsqueeze(1)
        labels, scores, boxes, query = self._select(boxes, logits, box_scale)
        # [b, n, h4, w4] -> [b, K, h4, w4], the masks of the selected queries. The index is expanded here: the
        # implicit broadcast of take_along_axis, traced for any input size, expanded the masks to [b, n, 1, 1]
        hw = paddle.shape(masks)[2:]
        index = query.unsqueeze(-1).unsqueeze(-1).expand([-1, -1, hw[0], hw[1]])
        masks = paddle.take_along_axis(masks, index, axis=1, broadcast=False)
        # [b, 2] (h, w) of the region of each image's masks that maps onto the original image
        crop_hw = paddle.ones_like(im_shape) * paddle.shape(masks)[2:].astype(im_shape.dtype)
        if self.bbox_decode_type == 'pad':
            if paddle.in_dynamic_mode():
                masks = F.interpolate(masks, scale_factor=self.mask_stride, mode='bilinear', align_corners=False)
            else:  # Paddle Inference's oneDNN cannot run interp ops (modeling/resize.py): the same weights
                masks = matrix_resize(masks, [hw[0] * self.mask_stride, hw[1] * self.mask_stride])
            crop_hw = im_shape

        # sizes stay tensors (no .numpy()): the same ops run in dygraph and in an exported graph
        sizes = origin_hw.astype('int32')  # [b, 2] (h, w)
        max_hw = sizes.max(0)
        # a Python-level choice: to_static would turn a test on the (unknown) batch size into a cond op holding
        # both branches, and the loop into a while op, which oneDNN and paddle2onnx do not run
        if paddle.in_dynamic_mode():  # one F.interpolate per image: the official arithmetic
            masks = resize_each_image(masks, crop_hw.astype('int32'), sizes, max_hw)
        else:  # a traced graph (the export, dynamic batch): the same bilinear weights as matrix products
            masks = batch_resize(masks, crop_hw, origin_hw, max_hw)
        # [b, K, H, W]: image i's pixels are [:h_i, :w_i]; the rest is -1 in the output (ppdet's COCO metric and
        # infer, json_results.strip_mask, cut each image's masks back to its own size where the -1 start) and left
        # out of the scores
        rows = paddle.arange(max_hw[0], dtype='int32').unsqueeze(0) < sizes[:, 0:1]  # [b, H]
        cols = paddle.arange(max_hw[1], dtype='int32').unsqueeze(0) < sizes[:, 1:2]  # [b, W]
        valid = paddle.logical_and(rows.unsqueeze(-1), cols.unsqueeze(1))  # [b, H, W]
        prob = F.sigmoid(masks)
        binary = paddle.logical_and(prob > self.mask_threshold, valid.unsqueeze(1)).astype(prob.dtype)
        if self.use_avg_mask_score:
            scores = scores * (binary * prob).sum([-2, -1]) / (binary.sum([-2, -1]) + 1e-6)
        bbox_num = paddle.full([boxes.shape[0]], self.num_top_queries, 'int32')
        # binary is 0 outside each image: -1 there, as arithmetic (no select op in the exported graph)
        mask = binary.astype('int32') - (1 - valid.unsqueeze(1).astype('int32'))
        # [b, K, H, W] -> [b*K, H, W]
        return self._rows(labels, scores, boxes), bbox_num, mask.flatten(0, 1)


def resize_each_image(masks, crop_hw, out_hw, max_hw):
    """Per image, the top-left ``crop_hw[i]`` region of its masks resized to ``out_hw[i]`` by F.interpolate
    (bilinear, align_corners=False: the official arithmetic), zero-padded to ``max_hw``.

    Args:
        masks (Tensor): [b, K, h, w] logits; b must be known (a Python loop over the images).
        crop_hw, out_hw (Tensor): int32 [b, 2] (h, w). max_hw (Tensor): int32 [2], out_hw.max(0).
    Returns:
        Tensor: [b, K, max_h, max_w] of masks' dtype.
    """
    zero = paddle.zeros([], 'int32')
    out = []
    for i in range(masks.shape[0]):
        m = masks[i:i + 1, :, :crop_hw[i, 0], :crop_hw[i, 1]]  # [1, K, crop_h, crop_w]
        m = F.interpolate(m, size=[out_hw[i, 0], out_hw[i, 1]], mode='bilinear', align_corners=False)
        pad = paddle.stack([zero, max_hw[1] - out_hw[i, 1], zero, max_hw[0] - out_hw[i, 0]])
        out.append(F.pad(m, pad, mode='constant', value=0, data_format='NCHW'))
    return paddle.concat(out)


def batch_resize(masks, crop_hw, out_hw, max_hw):
    """`resize_each_image` as matrix products over the batch, for a graph whose batch size is unknown.

    Per image, [max_h, h] and [max_w, w] matrices hold F.interpolate's bilinear weights from its crop to its
    size (`resize.bilinear_matrix`); the values agree to float rounding (~1e-5 on logits of magnitude 10, so a
    binary mask can differ where a logit is that close to the threshold). As fast as F.interpolate on CPU (a
    grid_sample of the same points took 2.6x its time: benchmarks/mask_speed.py).
    Args:
        masks (Tensor): [b, K, h, w] logits. crop_hw, out_hw (Tensor): [b, 2] (h, w). max_hw (Tensor): int32 [2].
    Returns:
        Tensor: [b, K, max_h, max_w]; beyond out_hw[i], image i holds no meaningful values (the caller masks them).
    """
    hw = paddle.shape(masks)[2:]
    rows = bilinear_matrix(max_hw[0], hw[0], masks.dtype, crop_hw[:, 0], out_hw[:, 0])  # [b, H, h]
    cols = bilinear_matrix(max_hw[1], hw[1], masks.dtype, crop_hw[:, 1], out_hw[:, 1])  # [b, W, w]
    # [b, K, h, w] x [b, 1, w, W] -> [b, K, h, W]; [b, 1, H, h] x [b, K, h, W] -> [b, K, H, W]
    return paddle.matmul(rows.unsqueeze(1), paddle.matmul(masks, cols.unsqueeze(1), transpose_y=True))
