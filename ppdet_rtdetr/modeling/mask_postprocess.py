"""Mask-RT-DETR post-process: RT-DETR's top-k boxes plus the binary masks of the same queries, at the original
image size, for any batch size (the official ``DETRPostProcess`` asserts a batch of 1 when it returns masks)."""
import paddle
import paddle.nn.functional as F
from ppdet.core.workspace import register

from .postprocess import RTDETRPostProcess

__all__ = ['RTDETRMaskPostProcess']

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
    original-image pixels, bbox_num int32 [b] all K, mask int32 [b*K, H, W] of {0, 1}, -1 padding). H, W are the largest
    original height and width in the batch: image i's masks fill [:h_i, :w_i] and are -1 beyond (ppdet's Mask R-CNN
    convention for batches); with one image they are exactly its size, as the official output.

    Sizes stay tensors, so the same code runs in an exported graph; the loop over the images needs the batch size
    known when the graph is built (a fixed-batch export).

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
            pad_hw = paddle.to_tensor([float(pad_shape[0]), float(pad_shape[1])], dtype=im_shape.dtype)
            # boxes normalised over the padded input: scale to the original image and its padding
            box_scale = box_scale * paddle.concat([pad_hw[1:], pad_hw[:1]] * 2) / paddle.concat(
                [im_shape[:, 1:2], im_shape[:, 0:1]] * 2, axis=-1).unsqueeze(1)
        labels, scores, boxes, query = self._select(boxes, logits, box_scale)
        # [b, n, h4, w4] -> [b, K, h4, w4], the masks of the selected queries
        masks = paddle.take_along_axis(masks, query.unsqueeze(-1).unsqueeze(-1), axis=1)

        # sizes stay tensors (no .numpy()): the same ops run in dygraph and in an exported graph
        sizes = origin_hw.astype('int32')  # [b, 2] (h, w)
        max_hw = sizes.max(0)
        crops = im_shape.astype('int32')
        zero = paddle.zeros([], 'int32')
        out_masks, out_scores = [], []
        for i in range(masks.shape[0]):  # the batch must be known (a fixed-batch export)
            m = masks[i:i + 1]  # [1, K, h4, w4]
            if self.bbox_decode_type == 'pad':
                m = F.interpolate(m, scale_factor=self.mask_stride, mode='bilinear', align_corners=False)
                m = m[:, :, :crops[i, 0], :crops[i, 1]]
            m = F.interpolate(m, size=[sizes[i, 0], sizes[i, 1]], mode='bilinear', align_corners=False)
            prob = F.sigmoid(m)
            binary = (prob > self.mask_threshold).astype(prob.dtype)
            score = scores[i]
            if self.use_avg_mask_score:
                score = score * (binary * prob).sum([-2, -1])[0] / (binary.sum([-2, -1])[0] + 1e-6)
            out_scores.append(score)
            # [1, K, h, w] -> [K, max_h, max_w], -1 below and right of the image: ppdet's COCO metric and infer
            # (json_results.strip_mask) cut each image's masks back to its own size where the -1 start
            pad = paddle.stack([zero, max_hw[1] - sizes[i, 1], zero, max_hw[0] - sizes[i, 0]])
            out_masks.append(F.pad(binary.astype('int32'), pad, mode='constant', value=-1, data_format='NCHW')[0])
        scores = paddle.stack(out_scores)
        bbox_num = paddle.full([boxes.shape[0]], self.num_top_queries, 'int32')
        return self._rows(labels, scores, boxes), bbox_num, paddle.concat(out_masks)
