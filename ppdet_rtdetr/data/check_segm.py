"""Checks of the ``segmentation`` field of COCO instance annotations, for ``check_coco(masks=...)``.

COCO stores a mask as polygons (a list of ``[x1, y1, x2, y2, ...]`` in pixels) or as run-length encoding
(``{'size': [h, w], 'counts': ...}``, counts column-major, alternating background / foreground runs,
either a list of ints or COCO's compressed string). pycocotools, which ppdet's mask transforms and the
COCO segm metric use, trusts both: an odd-length polygon raises deep in a data loader worker, and for a
compressed RLE whose runs overrun ``h * w`` (pycocotools 2.0.11) ``area`` and ``toBbox`` return numbers
larger than the image while ``decode`` raises "Invalid RLE mask representation" only when a sample is
read. So the runs are counted here, in Python, before pycocotools computes an RLE's area and box.
"""
import math

import numpy as np

__all__ = ['check_segmentation', 'rle_string_counts']

# Annotation tools put polygon vertices on pixel edges or centres: up to a pixel past the border is normal.
_OUTSIDE_TOLERANCE = 1.0
# Below this IoU the mask's box and `bbox` describe different objects (COCO derives `bbox` from the mask).
MIN_MASK_BOX_IOU = 0.5
# Shoelace areas at or below this (px^2) are collinear or repeated points, not shapes.
_ZERO_AREA = 1e-6


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + ' ...'


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rle_string_counts(counts):
    """The runs of COCO's compressed RLE string (pycocotools' ``rleFrString``, read in Python).

    Each run is a little-endian group of 5-bit digits, stored as chr(48 + digit), 0x20 in a digit meaning
    another follows, 0x10 in the last one the sign; runs from the fourth on are stored as differences to
    the run two before.

    Args:
        counts (str|bytes): the ``counts`` string.
    Returns:
        list[int]: the runs, or None if the string is not a valid encoding (a character outside '0'..'o',
        or a run cut short).
    """
    codes = counts.encode('ascii', 'replace') if isinstance(counts, str) else bytes(counts)
    runs, pos = [], 0
    while pos < len(codes):
        value, shift, more = 0, 0, True
        while more:
            if pos == len(codes) or not 48 <= codes[pos] < 48 + 64:
                return None
            digit = codes[pos] - 48
            value |= (digit & 0x1F) << shift
            more = bool(digit & 0x20)
            pos += 1
            shift += 5
            if not more and digit & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _iou_xywh(a, b):
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(ix, 0.) * max(iy, 0.)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.


def _check_polygons(segm, img_w, img_h, clip, where, report):
    """(kept polygons, mask box [x, y, w, h] inside the image) or None when the annotation is skipped."""
    parts = []
    for i, poly in enumerate(segm):
        if not (isinstance(poly, list) and all(_is_number(v) for v in poly)):
            report.add('malformed_segmentation', **where, value=f'segmentation[{i}] = {_short(poly)}: not a list '
                                                                f'of numbers')
            return None
        if len(poly) < 6 or len(poly) % 2:
            report.add('malformed_segmentation', **where, value=f'segmentation[{i}] = {_short(poly)}: {len(poly)} '
                                                                'numbers (x, y pairs, at least 3 points)')
            return None
        xy = np.array(poly, np.float64)  # [2n] x1, y1, x2, y2, ...
        if not np.isfinite(xy).all():
            report.add('malformed_segmentation', **where, value=f'segmentation[{i}] = {_short(poly)}: NaN or inf')
            return None
        parts.append(xy)
    kept = []
    for i, (poly, xy) in enumerate(zip(segm, parts)):
        x, y = xy[0::2], xy[1::2]
        # shoelace over the closed ring (last point back to the first)
        area = 0.5 * abs(float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]))
        if area <= _ZERO_AREA:
            report.add('degenerate_polygon', **where, value=f'segmentation[{i}] = {_short(poly)}: area {area:g}')
        else:
            kept.append((poly, xy))
    if not kept:
        return None
    points = np.concatenate([xy for _, xy in kept]).reshape(-1, 2)  # [2n] -> [n, 2] (x, y)
    lo, hi = points.min(0), points.max(0)
    tol = _OUTSIDE_TOLERANCE
    if lo[0] < -tol or lo[1] < -tol or hi[0] > img_w + tol or hi[1] > img_h + tol:
        # each point's distance past the border on each axis (0 inside); the farthest one is shown
        past = np.maximum(np.maximum(-points, points - [img_w, img_h]), 0)
        far = points[np.argmax((past ** 2).sum(1))]
        value = (f'{int((past > tol).any(1).sum())} of {len(points)} points outside the {img_w:g}x{img_h:g} image, '
                 f'e.g. ({far[0]:g}, {far[1]:g})')
        if not clip:
            report.add('segmentation_outside_image', **where, value=value)
            return None
        report.add('segmentation_clipped', **where, value=value)
    x1, y1 = min(max(lo[0], 0.), img_w), min(max(lo[1], 0.), img_h)
    x2, y2 = min(max(hi[0], 0.), img_w), min(max(hi[1], 0.), img_h)
    return [poly for poly, _ in kept], [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def _check_rle(segm, img_w, img_h, where, report):
    """(mask area, mask box [x, y, w, h]) of a valid RLE, or None when the annotation is skipped."""
    from pycocotools import mask as mask_util  # ppdet's dependency; only instance-segmentation sets need it

    size, counts = segm.get('size'), segm.get('counts')
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
            and (isinstance(counts, str) or isinstance(counts, list) and all(isinstance(v, int) for v in counts))):
        report.add('malformed_segmentation', **where, value=f"RLE size={_short(size)} counts={_short(counts)}: needs "
                                                            "size [h, w] and counts (a list of ints or a string)")
        return None
    h, w = size
    if (w, h) != (img_w, img_h):
        swapped = ' (swapped: size is [h, w])' if (h, w) == (img_w, img_h) else ''
        report.add('rle_size_mismatch', **where, value=f'RLE size {size} in a {img_w:g}x{img_h:g} image, i.e. '
                                                       f'[{img_h:g}, {img_w:g}]{swapped}')
        return None
    runs = counts if isinstance(counts, list) else rle_string_counts(counts)
    if runs is None:
        report.add('bad_rle', **where, value=f'counts {_short(counts)}: not a COCO compressed RLE string')
        return None
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        report.add('bad_rle', **where, value=f'{len(runs)} runs summing to {sum(runs)}, negative: '
                                             f'{any(r < 0 for r in runs)}; size {size} needs {h * w} pixels')
        return None
    rle = mask_util.frPyObjects(segm, h, w) if isinstance(counts, list) else dict(segm, counts=counts.encode())
    return int(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]


def check_segmentation(ann, img_w, img_h, bbox, clip, where, report):
    """Checks ``ann['segmentation']`` against its image and its (clipped) box; adds issues to ``report``.

    Args:
        ann (dict): a COCO annotation whose box passed check_coco's checks.
        img_w, img_h (float): the image size.
        bbox (list[float]): the annotation's box [x, y, w, h], clipped to the image.
        clip (bool): check_coco's ``clip_boxes``: keep a mask reaching past the image (cut at the border when
            rasterized) rather than skip it.
        where (dict): ``image_id``, ``ann_id``, ``file_name`` of the annotation, for the report.
        report (Report): where issues go (warnings: the annotation is skipped or repaired).

    Returns:
        (bool, segmentation): whether the annotation is kept, and its segmentation then: the RLE dict, the
        polygons without their zero-area parts, or a crowd annotation's empty value (or None) as it was.
    """
    segm = ann.get('segmentation')
    crowd = bool(ann.get('iscrowd'))
    if isinstance(segm, dict):
        checked = _check_rle(segm, img_w, img_h, where, report)
        if checked is None:
            return False, None
        area, mask_box = checked
        if area == 0:
            return _empty(segm, crowd, 'an RLE without a foreground pixel', where, report)
    elif isinstance(segm, list) and any(part != [] for part in segm):  # [[]] is as empty as []
        if crowd:
            report.add('crowd_polygon', **where)
        checked = _check_polygons(segm, img_w, img_h, clip, where, report)
        if checked is None:
            return False, None
        segm, mask_box = checked
    elif segm is None or isinstance(segm, list):
        return _empty(segm, crowd, 'no segmentation' if segm is None else f'segmentation={_short(segm)}', where,
                      report)
    else:
        report.add('malformed_segmentation', **where, value=f'{_short(segm)}: neither polygons nor an RLE dict')
        return False, None
    iou = _iou_xywh(mask_box, bbox)
    if iou < MIN_MASK_BOX_IOU:
        report.add('mask_box_mismatch', **where, value=f'mask box {[round(v, 2) for v in mask_box]}, bbox '
                                                       f'{[round(v, 2) for v in bbox]}: IoU {iou:.2f}')
        return False, None
    return True, segm


def _empty(segm, crowd, value, where, report):
    """A crowd region may come without a mask (ppdet ignores crowd regions in training): kept as it is; any
    other annotation is skipped with a warning."""
    if crowd:
        return True, segm
    report.add('empty_segmentation', **where, value=value)
    return False, None
