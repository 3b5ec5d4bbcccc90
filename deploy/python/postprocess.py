"""What happens after the engine: numpy top-k of raw exports, per-image results, drawing, JSON."""
import cv2
import numpy as np

__all__ = ['topk_postprocess', 'split_detections', 'draw_detections', 'detections_to_json']


def _sigmoid(x):
    return 1. / (1. + np.exp(-x))


def topk_postprocess(boxes, logits, im_shape, scale_factor, num_top_queries, use_focal_loss=True):
    """RT-DETR's post-process (the model's RTDETRPostProcess) in numpy, for exports with exclude_post_process.

    Args:
        boxes (ndarray): [b, n, 4] sigmoid cxcywh in [0, 1]. logits (ndarray): [b, n, k].
        im_shape, scale_factor (ndarray): [b, 2] (h, w), as fed to the model.
        num_top_queries (int): K, detections per image.
    Returns:
        (bbox [b*K, 6] float32 (class, score, x1, y1, x2, y2) in original pixels, bbox_num int32 [b]).
    """
    b = boxes.shape[0]
    origin_hw = np.floor(im_shape / scale_factor + 0.5)  # [b, 2] (h, w)
    # [b, 2] (h, w) -> [b, 1, 4] (w, h, w, h)
    scale = origin_hw[:, [1, 0, 1, 0]][:, None, :]
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    xyxy = np.concatenate([cxcy - 0.5 * wh, cxcy + 0.5 * wh], -1) * scale  # [b, n, 4]
    if use_focal_loss:
        scores = _sigmoid(logits)
    else:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        scores = (e / e.sum(-1, keepdims=True))[..., :-1]
    k = scores.shape[-1]
    # [b, n, k] -> [b, n*k] -> top K: query = index // k, class = index % k
    flat = scores.reshape(b, -1)
    index = np.argsort(-flat, axis=1, kind='stable')[:, :num_top_queries]
    top_scores = np.take_along_axis(flat, index, 1)
    top_boxes = np.take_along_axis(xyxy, (index // k)[..., None], 1)  # [b, K, 4]
    bbox = np.concatenate([(index % k)[..., None].astype('float32'), top_scores[..., None], top_boxes], -1)
    return bbox.reshape(-1, 6).astype('float32'), np.full([b], num_top_queries, dtype='int32')


def split_detections(bbox, bbox_num):
    """[sum(bbox_num), 6] -> list of [bbox_num[i], 6], one per image."""
    return np.split(bbox, np.cumsum(bbox_num)[:-1])


def draw_detections(image_rgb, dets, labels, threshold):
    """A BGR copy of `image_rgb` with the boxes scoring >= threshold drawn and labelled."""
    im = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    for cls, score, x1, y1, x2, y2 in dets[dets[:, 1] >= threshold]:
        color = tuple(int(c) for c in np.random.RandomState(int(cls)).randint(0, 255, 3))
        cv2.rectangle(im, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        name = labels[int(cls)] if int(cls) < len(labels) else str(int(cls))
        cv2.putText(im, f'{name} {score:.2f}', (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, color, 1, cv2.LINE_AA)
    return im


def detections_to_json(dets, labels, threshold):
    """Detections scoring >= threshold as a list of {class_id, label, score, bbox [x1, y1, x2, y2]}."""
    return [{'class_id': int(cls), 'label': labels[int(cls)] if int(cls) < len(labels) else str(int(cls)),
             'score': float(score), 'bbox': [float(x1), float(y1), float(x2), float(y2)]}
            for cls, score, x1, y1, x2, y2 in dets[dets[:, 1] >= threshold]]
