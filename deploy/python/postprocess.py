"""What happens after the engine: numpy top-k of raw exports, per-image results, drawing, JSON (masks as COCO
RLE: pycocotools' compressed form when it is installed, else the uncompressed form computed here)."""
import cv2
import numpy as np

try:
    from pycocotools import mask as mask_util
except ImportError:  # the deploy scripts need no pycocotools: uncompressed RLE instead
    mask_util = None

__all__ = ['topk_postprocess', 'split_detections', 'draw_detections', 'detections_to_json', 'mask_to_rle']


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


def mask_to_rle(mask, compressed=None):
    """COCO run-length encoding of a binary [h, w] mask: {'size': [h, w], 'counts': ...}.

    Runs are counted in column-major (Fortran) order, starting with a run of zeros (maybe empty), as COCO
    defines them. compressed (default: whether pycocotools is installed): pycocotools' compressed string;
    otherwise the runs as a list of ints (COCO's uncompressed RLE, which pycocotools' frPyObjects reads too).
    """
    mask = np.asarray(mask, dtype=np.uint8)
    if compressed is None:
        compressed = mask_util is not None
    if compressed:
        rle = mask_util.encode(np.asfortranarray(mask))
        return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}
    flat = mask.flatten(order='F')
    # run boundaries: where the value changes, with a leading 0 so that the first run counts zeros
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]] if flat.size else [1]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': [int(c) for c in counts]}


def draw_detections(image_rgb, dets, labels, threshold, masks=None):
    """A BGR copy of `image_rgb` with the boxes scoring >= threshold drawn and labelled, and with `masks`
    ([K, h, w] of {0, 1}, one per row of dets) each kept instance's mask as a half-transparent overlay in the
    colour of its class."""
    im = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    keep = dets[:, 1] >= threshold
    if masks is not None:
        for cls, mask in zip(dets[keep, 0], masks[keep].astype(bool)):
            color = np.random.RandomState(int(cls)).randint(0, 255, 3)
            im[mask] = (0.5 * im[mask] + 0.5 * color).astype(np.uint8)
    for cls, score, x1, y1, x2, y2 in dets[keep]:
        color = tuple(int(c) for c in np.random.RandomState(int(cls)).randint(0, 255, 3))
        cv2.rectangle(im, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        name = labels[int(cls)] if int(cls) < len(labels) else str(int(cls))
        cv2.putText(im, f'{name} {score:.2f}', (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, color, 1, cv2.LINE_AA)
    return im


def detections_to_json(dets, labels, threshold, masks=None):
    """Detections scoring >= threshold as a list of {class_id, label, score, bbox [x1, y1, x2, y2]}, each with
    'segmentation' (`mask_to_rle` of its row of `masks` [K, h, w]) when masks are given."""
    keep = dets[:, 1] >= threshold
    out = [{'class_id': int(cls), 'label': labels[int(cls)] if int(cls) < len(labels) else str(int(cls)),
            'score': float(score), 'bbox': [float(x1), float(y1), float(x2), float(y2)]}
           for cls, score, x1, y1, x2, y2 in dets[keep]]
    if masks is not None:
        for item, mask in zip(out, masks[keep]):
            item['segmentation'] = mask_to_rle(mask)
    return out
