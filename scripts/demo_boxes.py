"""Count the boxes a detector draws above a score threshold against the ground truth, object by object.

    python scripts/demo_boxes.py --anno dataset/shapes/annotations/instances_val.json \
        --pred output/demo/bbox.json --threshold 0.5 [--out boxes.json] [--images_in output/demo/samples]

`--pred` is a COCO results file (what `tools/eval.py` / `--eval` write as bbox.json). Per image, the boxes at or
above the threshold are matched greedily, highest score first, to the unmatched ground-truth box of the same
category with the largest IoU >= 0.5. A box that overlaps an already matched object of its category by
IoU >= 0.5 is a duplicate; any other unmatched box is a false detection; an object no box matched is missed.
`--images_in DIR` counts only the images whose file is in DIR (the demo's drawn pictures).
Prints one summary line (and the per-image counts as JSON with --out); exits 1 if any box is a duplicate or
false, or any object is missed, so a script can rely on "one box per object".
"""
import argparse
import collections
import json
import os
import sys

import numpy as np

__all__ = ['count_boxes']

_KEYS = ('objects', 'boxes', 'matched', 'duplicates', 'false', 'missed')


def _iou(box, boxes):
    """IoU of one xywh box with an [n, 4] array of xywh boxes -> [n]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def count_boxes(gt, predictions, threshold, iou=0.5):
    """Match the predictions at or above `threshold` to the ground truth of each image.

    Args:
        gt (dict): a COCO annotation file (images, annotations; crowd boxes are ignored).
        predictions (list[dict]): COCO results (image_id, category_id, bbox xywh, score).
        threshold (float): the draw threshold.
    Returns:
        dict: totals {'objects', 'boxes', 'matched', 'duplicates', 'false', 'missed'} and 'images', the same
        counts per image id with at least one error.
    """
    objects = collections.defaultdict(list)
    for ann in gt['annotations']:
        if not ann.get('iscrowd', 0):
            objects[ann['image_id']].append(ann)
    boxes = collections.defaultdict(list)
    for p in predictions:
        if p['score'] >= threshold:
            boxes[p['image_id']].append(p)
    totals = collections.Counter()
    images = {}  # image id -> counts, for the images with an error
    for image in gt['images']:
        counts = _count_image(objects[image['id']], boxes[image['id']], iou)
        totals.update(counts)
        if counts['duplicates'] or counts['false'] or counts['missed']:
            images[image['id']] = counts
    return {**{k: totals[k] for k in _KEYS}, 'images': images}


def _count_image(objects, boxes, iou):
    gt_boxes = np.array([o['bbox'] for o in objects], dtype=np.float64).reshape(-1, 4)
    gt_cats = np.array([o['category_id'] for o in objects])
    matched = np.zeros(len(objects), dtype=bool)
    counts = collections.Counter(objects=len(objects), boxes=len(boxes))
    for box in sorted(boxes, key=lambda b: -b['score']):
        overlap = np.where(gt_cats == box['category_id'],
                           _iou(np.asarray(box['bbox'], dtype=np.float64), gt_boxes), 0.)
        free = np.where(matched, 0., overlap)
        if len(objects) and free.max() >= iou:
            matched[free.argmax()] = True
            counts['matched'] += 1
        elif len(objects) and overlap.max() >= iou:
            counts['duplicates'] += 1
        else:
            counts['false'] += 1
    counts['missed'] = int((~matched).sum())
    return {k: counts[k] for k in _KEYS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--anno', required=True, help='COCO annotation file of the evaluated images')
    parser.add_argument('--pred', required=True, help='COCO results file (bbox.json)')
    parser.add_argument('--threshold', type=float, default=0.5, help='draw threshold')
    parser.add_argument('--out', help='write the counts as JSON here')
    parser.add_argument('--images_in', help='count only the images whose file (base name) is in this folder')
    args = parser.parse_args(argv)
    with open(args.anno) as f:
        gt = json.load(f)
    if args.images_in:
        names = set(os.listdir(args.images_in))
        gt['images'] = [im for im in gt['images'] if os.path.basename(im['file_name']) in names]
    with open(args.pred) as f:
        result = count_boxes(gt, json.load(f), args.threshold)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'threshold': args.threshold, **result}, f, indent=2)
    print(f"boxes scored >= {args.threshold}: {result['boxes']} for {result['objects']} objects in "
          f"{len(gt['images'])} images: {result['matched']} on an object, {result['duplicates']} duplicates, "
          f"{result['false']} false, {result['missed']} objects missed")
    return 1 if result['duplicates'] or result['false'] or result['missed'] else 0


if __name__ == '__main__':
    sys.exit(main())
