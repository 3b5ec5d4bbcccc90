"""Top-k post-process of RT-DETR: no NMS, boxes scaled back to the original image."""
import paddle
import paddle.nn.functional as F
from ppdet.core.workspace import register

from .box_ops import cxcywh_to_xyxy

__all__ = ['RTDETRPostProcess']


@register
class RTDETRPostProcess(object):
    """Select the top `num_top_queries` (query, class) pairs by score.

    Args:
        num_classes (int): k.
        num_top_queries (int): detections kept per image, K (<= n * k).
        use_focal_loss (bool): must be True: the score heads give k per-class sigmoid logits. False (softmax
            over a background column) is refused at construction: these logits have no background column, and
            the official softmax branch drops the last real class instead (and the criterion refuses it too).

    __call__(head_out, im_shape [b, 2] (h, w) of the network input, scale_factor [b, 2] (h, w) network /
    original) -> (bbox [b*K, 6] float32 rows (class index, score, x1, y1, x2, y2) in original-image pixels,
    bbox_num int32 [b] all equal to K, None). Contract of ppdet's deploy code: the original size is
    round(im_shape / scale_factor), so both inputs must be given for boxes to land on the original image.
    """
    __shared__ = ['num_classes', 'use_focal_loss']

    def __init__(self, num_classes=80, num_top_queries=300, use_focal_loss=True):
        if not use_focal_loss:
            raise ValueError(f'RTDETRPostProcess: use_focal_loss={use_focal_loss} (softmax scores with a background '
                             f'class) is not supported: RT-DETR has {num_classes} sigmoid class scores and no '
                             f'background column; set use_focal_loss: true')
        self.num_classes = num_classes
        self.num_top_queries = num_top_queries
        self.use_focal_loss = use_focal_loss

    def __call__(self, head_out, im_shape, scale_factor, pad_shape=None):
        labels, scores, boxes, _ = self._select(head_out[0], head_out[1], self._box_scale(im_shape, scale_factor))
        return self._rows(labels, scores, boxes), paddle.full([boxes.shape[0]], self.num_top_queries, 'int32'), None

    @staticmethod
    def _box_scale(im_shape, scale_factor):
        """[b, 1, 4] (w, h, w, h) of the original images, round(im_shape / scale_factor)."""
        origin_hw = paddle.floor(im_shape / scale_factor + 0.5)  # [b, 2]
        # [b, 2] (h, w) -> [b, 1, 4] (w, h, w, h)
        return paddle.concat([origin_hw[:, 1:2], origin_hw[:, 0:1]] * 2, axis=-1).unsqueeze(1)

    def _select(self, boxes, logits, box_scale):
        """The top K (query, class) pairs: labels [b, K], scores [b, K], xyxy boxes [b, K, 4] times box_scale,
        query indices [b, K]."""
        boxes = cxcywh_to_xyxy(boxes) * box_scale  # [b, n, 4]
        scores = F.sigmoid(logits)
        k = scores.shape[-1]
        # [b, n, k] -> [b, n*k] -> top K: query = index // k, class = index % k
        scores, index = paddle.topk(scores.flatten(1), self.num_top_queries, axis=-1)
        labels = index % k
        query = index // k
        boxes = paddle.take_along_axis(boxes, query.unsqueeze(-1), axis=1)  # [b, K, 4]
        return labels, scores, boxes, query

    @staticmethod
    def _rows(labels, scores, boxes):
        """[b*K, 6] float32 rows (class, score, x1, y1, x2, y2)."""
        bbox = paddle.concat([labels.unsqueeze(-1).astype(boxes.dtype), scores.unsqueeze(-1), boxes], axis=-1)
        return bbox.reshape([-1, 6]).astype('float32')
