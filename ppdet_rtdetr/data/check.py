"""Checks a COCO-format detection (or instance segmentation) dataset before training and says what to fix.

ppdet's ``COCODataSet`` trusts the annotation file: a NaN box, a truncated JPEG or a wrong
``num_classes`` surfaces thousands of iterations in as a NaN loss or a crash far from its cause.
``check_coco`` reads the whole file up front, reports every defect with a count and the first
offending entries, and returns the cleaned image / annotation lists that training can use as is,
e.g. from a ``COCODataSet`` subclass's ``parse_dataset``::

    report = check_coco(anno_path, image_dir, num_classes, skip_empty=not self.allow_empty)
    self.roidbs = report.to_records(load_crowd=self.load_crowd)
    self.catid2clsid = report.catid2clsid
    self.cname2cid = {name: clsid for clsid, name in enumerate(report.names)}
"""
import io
import json
import math
import os
import re

import cv2
import numpy as np
from PIL import Image

from .check_report import DatasetError, Issue, Report  # noqa: F401  (part of this module's API)
from .check_segm import check_segmentation
from .threads import map_in_threads

REQUIRED_KEYS = ('images', 'annotations', 'categories')
# Boxes may overshoot the image by float rounding from export tools; only larger overshoots are reported.
_CLIP_EPS = 1e-3
# In JPEG entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker; anything else is
# the next real marker.
_JPEG_MARKER = re.compile(rb'\xff[^\x00\xd0-\xd7]')


def check_coco(ann_file, image_dir, num_classes=None, clip_boxes=True, skip_empty=False,
               check_images=True, max_examples=5, masks=False):
    """Checks a COCO detection dataset and returns what training can use.

    Args:
        ann_file (str): COCO JSON with ``images``, ``annotations`` and ``categories``.
        image_dir (str): directory that ``images[].file_name`` is relative to.
        num_classes (int|None): the config's ``num_classes``; must equal the number of categories.
        clip_boxes (bool): clip boxes that leave the image (True) or drop them (False).
        skip_empty (bool): drop images without a usable non-crowd box (ppdet ``allow_empty=False``).
        check_images (bool): decode every image (as ppdet's ``DecodeImage`` does, so EXIF rotation
            counts) to find missing / corrupt files and the real size; False trusts the stored size.
        max_examples (int): examples kept per issue.
        masks (bool|str): check the ``segmentation`` of every annotation (an instance segmentation set:
            polygons / RLE well formed, inside the image, of non-zero area, near the box; a non-crowd
            annotation without a mask is skipped); False (boxes only) leaves ``segmentation`` unread;
            'auto' checks them when any annotation has a non-empty ``segmentation``.

    Returns:
        Report: the issues and the cleaned ``images`` / ``annotations``.

    Raises:
        DatasetError: if there is any error; ``.report`` holds the Report.
    """
    report = Report(ann_file, image_dir, max_examples=max_examples)
    data = _load_json(ann_file, report)
    if data is not None:
        report.num_file_images = len(data['images'])
        report.num_file_annotations = len(data['annotations'])
        _check_categories(data['categories'], num_classes, report)
        if check_images and not os.path.isdir(image_dir):
            # One error instead of a missing_image warning per file; the stored sizes are checked instead.
            report.add('image_dir_missing', file_name=image_dir)
            check_images = False
        file_names = _check_images(data['images'], image_dir, check_images, report)
        if masks == 'auto':
            masks = any(isinstance(ann, dict) and ann.get('segmentation') for ann in data['annotations'])
        _check_annotations(data['annotations'], file_names, clip_boxes, masks, report)
        _check_empty(skip_empty, report)
    if report.errors:
        raise DatasetError(report)
    return report


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_json(ann_file, report):
    """Returns the parsed file, or None (with an error added) when it has no usable top level."""
    if not os.path.isfile(ann_file):
        report.add('ann_file_missing', file_name=ann_file)
        return None
    try:
        with open(ann_file, 'rb') as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        report.add('ann_file_not_json', file_name=ann_file, value=str(e))
        return None
    if not isinstance(data, dict):
        report.add('missing_key', file_name=ann_file, value=f'top level is a {type(data).__name__}')
        return None
    missing = [key for key in REQUIRED_KEYS if not isinstance(data.get(key), list)]
    for key in missing:
        report.add('missing_key', file_name=ann_file, value=key)
    return None if missing else data


def _check_categories(categories, num_classes, report):
    names = {}  # category id -> name, in file order
    for cat in categories:
        cat_id = cat.get('id') if isinstance(cat, dict) else None
        if not _is_int(cat_id):
            report.add('bad_category', value=cat)
        elif cat_id in names:
            report.add('duplicate_category_id', value=cat_id)
        else:
            names[cat_id] = str(cat.get('name', cat_id))
    report.catid2clsid = {cat_id: i for i, cat_id in enumerate(names)}
    report.names = list(names.values())
    report.num_classes = len(names)
    for name in sorted({n for n in report.names if report.names.count(n) > 1}):
        report.add('duplicate_category_name', value=name)
    if list(names) != sorted(names):
        report.add('unsorted_category_ids', value=list(names)[:10])
    if num_classes is not None and num_classes != report.num_classes:
        report.add('num_classes_mismatch', file_name=report.ann_file,
                   value=f'num_classes={num_classes}, categories in the file={report.num_classes}')


def _check_images(images, image_dir, check_images, report):
    """Fills ``report.images``; returns {id: file_name} of every valid image entry, usable or not."""
    decoded = {}
    if check_images:
        # cv2 decodes without the GIL: one thread per core reads and decodes the files in parallel. The
        # reader forks its workers right after this check: map_in_threads returns only once its threads have
        # ended for the OS too, else a worker can inherit a cv2 lock held by an exiting thread and hang.
        paths = sorted({os.path.join(image_dir, img['file_name']) for img in images
                        if isinstance(img, dict) and isinstance(img.get('file_name'), str)})
        decoded = dict(zip(paths, map_in_threads(_decoded_size, paths, max_workers=os.cpu_count() or 1)))
    file_names = {}
    for img in images:
        img_id, fname = (img.get('id'), img.get('file_name')) if isinstance(img, dict) else (None, None)
        if not _is_int(img_id) or not isinstance(fname, str):
            report.add('bad_image_entry', value=img)
            continue
        if img_id in file_names:
            report.add('duplicate_image_id', image_id=img_id, file_name=fname)
            continue
        file_names[img_id] = fname
        stored = (img.get('width'), img.get('height'))
        stored_ok = all(_is_number(v) and 0 < v < math.inf for v in stored)
        if check_images:
            size, problem = decoded[os.path.join(image_dir, fname)]
            if problem:
                report.add(problem[0], image_id=img_id, file_name=fname, value=problem[1])
                continue
            if not stored_ok or tuple(float(v) for v in stored) != size:
                swapped = stored_ok and tuple(float(v) for v in stored[::-1]) == size
                report.add('size_mismatch', image_id=img_id, file_name=fname,
                           value=f'stored {stored[0]}x{stored[1]}, file {size[0]:g}x{size[1]:g}'
                                 + (' (swapped)' if swapped else ''))
        elif not stored_ok:
            report.add('bad_image_entry', image_id=img_id, file_name=fname, value=f'{stored[0]}x{stored[1]}')
            continue
        else:
            size = tuple(float(v) for v in stored)
        report.images.append(dict(img, width=size[0], height=size[1]))
    return file_names


def _decoded_size(path):
    """Returns ``((w, h), None)`` as ppdet's decoder sees the file, or ``(None, (code, why))``."""
    if not os.path.isfile(path):
        return None, ('missing_image', f'no file {path}')
    with open(path, 'rb') as f:
        data = f.read()
    is_jpeg = data[:2] == b'\xff\xd8'
    # A JPEG is decoded at 1/8 scale (libjpeg skips most of the inverse DCT: several times faster on a
    # COCO-sized set), which fails where the full decode fails; its size comes from the header below.
    # Other formats get ppdet's own call, IMREAD_COLOR, whose result gives the size.
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if is_jpeg else cv2.IMREAD_COLOR
    im = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if im is None:
        return None, ('corrupt_image', 'cv2 cannot decode it')
    # libjpeg pads a truncated JPEG with gray and only prints a warning, so cv2 still returns an image.
    if is_jpeg and not _jpeg_is_complete(data):
        return None, ('corrupt_image', 'truncated JPEG (no end-of-image marker)')
    if not is_jpeg:
        return (float(im.shape[1]), float(im.shape[0])), None
    return _jpeg_size(data), None


def _jpeg_size(data):
    """(w, h) of a JPEG as ppdet's cv2.imdecode(IMREAD_COLOR) returns it: EXIF orientations 5-8 swap them."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (float(h), float(w)) if orientation in (5, 6, 7, 8) else (float(w), float(h))


def _jpeg_is_complete(data):
    """True when the JPEG's marker chain reaches its end-of-image marker.

    Walking the segments skips EXIF thumbnails (which carry their own end marker) inside APPn.
    """
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if pos + 4 > len(data):
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
        if marker == 0xDA:  # a scan: skip its entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def _check_annotations(anns, file_names, clip_boxes, masks, report):
    sizes = {im['id']: (im['width'], im['height']) for im in report.images}
    kept_by_id = {}  # annotation id -> (image_id, category_id, bbox) of the first kept entry
    for ann in anns:
        ok = isinstance(ann, dict) and all(k in ann for k in ('id', 'image_id', 'category_id', 'bbox'))
        if not ok:
            report.add('malformed_annotation', value=ann if not isinstance(ann, dict) else sorted(ann))
            continue
        ann_id, img_id, cat_id, bbox = ann['id'], ann['image_id'], ann['category_id'], ann['bbox']
        where = dict(image_id=img_id, ann_id=ann_id, file_name=file_names.get(img_id))
        if img_id not in file_names:
            report.add('unknown_image_id', **where)
            continue
        if img_id not in sizes:
            report.add('dropped_with_image', **where)
            continue
        if cat_id not in report.catid2clsid:
            report.add('unknown_category_id', **where, value=cat_id)
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report.add('malformed_annotation', **where, value=bbox)
            continue
        area = ann.get('area')
        if not all(math.isfinite(v) for v in bbox + ([area] if _is_number(area) else [])):
            report.add('non_finite_box', **where, value=f'bbox={bbox} area={area}')
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            report.add('degenerate_box', **where, value=bbox)
            continue
        img_w, img_h = sizes[img_id]
        x1, y1, x2, y2 = max(x, 0.), max(y, 0.), min(x + w, img_w), min(y + h, img_h)
        overshoot = max(x1 - x, y1 - y, x + w - x2, y + h - y2)
        clipped = [x1, y1, x2 - x1, y2 - y1]
        where_in_image = f'{bbox} in a {img_w:g}x{img_h:g} image'
        if overshoot > _CLIP_EPS and not clip_boxes:
            report.add('box_outside_image', **where, value=where_in_image)
            continue
        if x2 <= x1 or y2 <= y1:
            report.add('box_empty_after_clip', **where, value=where_in_image)
            continue
        if overshoot > _CLIP_EPS:
            report.add('box_clipped', **where, value=f'{where_in_image} -> {[round(v, 3) for v in clipped]}')
        key = (img_id, cat_id, clipped)
        if ann_id in kept_by_id:
            report.add('duplicate_annotation_id', **where,
                       value='exact copy' if kept_by_id[ann_id] == key else 'different box')
            if kept_by_id[ann_id] == key:
                continue
        else:
            kept_by_id[ann_id] = key
        if masks:
            keep, segm = check_segmentation(ann, img_w, img_h, clipped, clip_boxes, where, report)
            if not keep:
                continue
            if 'segmentation' in ann:
                ann = dict(ann, segmentation=segm)
        if not _is_number(area) or area <= 0:
            report.add('bad_area', **where, value=area)
            area = clipped[2] * clipped[3]
        if ann.get('iscrowd'):
            report.add('crowd', **where)
        report.annotations.append(dict(ann, bbox=clipped, area=area))


def _check_empty(skip_empty, report):
    with_boxes = {ann['image_id'] for ann in report.annotations if not ann.get('iscrowd')}
    for im in report.images:
        if im['id'] not in with_boxes:
            report.add('empty_image_skipped' if skip_empty else 'empty_image',
                       image_id=im['id'], file_name=im['file_name'])
    if skip_empty:
        report.images = [im for im in report.images if im['id'] in with_boxes]
        report.annotations = [ann for ann in report.annotations if ann['image_id'] in with_boxes]
    if not report.images:
        report.add('no_images', file_name=report.ann_file)
    elif not with_boxes:
        report.add('no_annotations', file_name=report.ann_file)
