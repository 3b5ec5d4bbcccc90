"""The report ``check_coco`` returns: issue codes with their fix, and the data that survives them."""
import os
from dataclasses import dataclass, field

import numpy as np

# code -> (severity, what is wrong and how to fix it). Values go into each example, not the text.
# ppdet's COCODataSet gives a crowd object this degenerate polygon: Poly2Mask draws it as an empty mask
_CROWD_POLYGON = [[0.0] * 8]

_MESSAGES = {
    'ann_file_missing': ('error', 'annotation file not found. Fix: check `dataset_dir` + `anno_path` '
                         '(or --ann).'),
    'ann_file_not_json': ('error', 'annotation file is not valid JSON. Fix: re-export it in COCO format.'),
    'missing_key': ('error', 'top-level key is missing or not a list; a COCO detection file needs `images`, '
                    '`annotations` and `categories` lists. Fix: re-export it in COCO detection format.'),
    'image_dir_missing': ('error', 'image directory not found. Fix: check `dataset_dir` + `image_dir` '
                          '(or --image_dir).'),
    'bad_category': ('error', '`categories[]` entry without an integer `id`. Fix: give every category an '
                     'integer id.'),
    'duplicate_category_id': ('error', '`categories[].id` is used more than once. Fix: give every category '
                              'a unique id.'),
    'num_classes_mismatch': ('error', '`num_classes` differs from the number of categories in the file, so '
                             'the class head and the labels disagree. Fix: set `num_classes` in the config '
                             'to the number of categories.'),
    'duplicate_image_id': ('error', '`images[].id` is used more than once, so annotations cannot tell the '
                           'images apart. Fix: give every image a unique id.'),
    'no_images': ('error', 'no usable image left; there is nothing to train on. Fix: see the warnings '
                  'above (image_dir, file names, image entries).'),
    'no_annotations': ('error', 'no usable non-crowd annotation left; there is nothing to train on. Fix: '
                       'see the warnings above (bbox format, image_id, category_id).'),
    'bad_image_entry': ('warning', '`images[]` entry lacks an integer `id`, a `file_name` or a positive '
                        '`width`/`height`; skipped with its annotations. Fix: complete the entry.'),
    'missing_image': ('warning', 'image file not found; skipped with its annotations. Fix: check '
                      '`image_dir` and `images[].file_name`.'),
    'corrupt_image': ('warning', 'image file cannot be decoded (corrupt or truncated); skipped with its '
                      'annotations. Fix: re-encode or remove the file.'),
    'size_mismatch': ('warning', '`images[].width`/`height` differ from the file; the file size is used. '
                      'Fix: correct the stored size (swapped sizes usually mean EXIF rotation).'),
    'malformed_annotation': ('warning', '`annotations[]` entry lacks `id`, `image_id` or `category_id`, or '
                             '`bbox` is not 4 numbers [x, y, w, h]; skipped. Fix: complete the entry.'),
    'unknown_image_id': ('warning', '`annotations[].image_id` is not in `images`; skipped. Fix: add the '
                         'image or correct the id.'),
    'unknown_category_id': ('warning', '`annotations[].category_id` is not in `categories`; skipped. Fix: '
                            'add the category or correct the id.'),
    'non_finite_box': ('warning', 'NaN or inf in `bbox` or `area`; skipped. Fix: repair or drop the '
                       'annotation.'),
    'degenerate_box': ('warning', '`bbox` width or height <= 0; skipped. Fix: COCO boxes are [x, y, width, '
                       'height], not [x1, y1, x2, y2].'),
    'box_clipped': ('warning', '`bbox` extends outside the image; clipped to it. Fix: clip the boxes in '
                    'the file.'),
    'box_outside_image': ('warning', '`bbox` extends outside the image; skipped because clipping is off '
                          '(--no_clip). Fix: clip the boxes in the file, or allow clipping.'),
    'box_empty_after_clip': ('warning', '`bbox` lies outside the image (empty after clipping); skipped. '
                             'Fix: check the box and the image size.'),
    'bad_area': ('warning', '`area` is missing or <= 0, which ppdet\'s COCODataSet drops (or crashes on); '
                 'set to the box w*h. Fix: store the area.'),
    'malformed_segmentation': ('warning', '`segmentation` is neither polygons (lists [x1, y1, x2, y2, ...] of '
                               'finite numbers, at least 3 points each) nor an RLE dict {size: [h, w], counts}; '
                               'skipped. Fix: re-export the masks in COCO format.'),
    'empty_segmentation': ('warning', 'non-crowd annotation without a mask (`segmentation` missing, empty, or an '
                           'RLE without a foreground pixel); skipped: its mask target would be empty. Fix: draw '
                           'the mask or remove the annotation.'),
    'degenerate_polygon': ('warning', '`segmentation` polygon encloses no area (collinear or repeated points); '
                           'that polygon is dropped, and the annotation when no polygon is left. Fix: redraw '
                           'it.'),
    'segmentation_clipped': ('warning', '`segmentation` has points over 1 pixel outside the image; kept, the '
                             'mask is cut at the image border when rasterized. Fix: clip the polygons.'),
    'segmentation_outside_image': ('warning', '`segmentation` has points over 1 pixel outside the image; skipped '
                                   'because clipping is off (--no_clip). Fix: clip the polygons, or allow '
                                   'clipping.'),
    'rle_size_mismatch': ('warning', '`segmentation.size` of the RLE differs from the image\'s [height, width]; '
                          'skipped: the mask does not fit the image. Fix: encode the mask at the image size.'),
    'bad_rle': ('warning', '`segmentation.counts` of the RLE is invalid: runs must be >= 0 and sum to height * '
                'width (a string: COCO\'s compressed counts); skipped (pycocotools gives it a wrong area and box, then '
                'fails to decode it in a data loader worker). '
                'Fix: re-encode the mask with pycocotools.'),
    'mask_box_mismatch': ('warning', 'the mask\'s bounding box and `bbox` overlap with IoU < 0.5: they describe '
                          'different objects; skipped. Fix: recompute `bbox` from the mask (pycocotools toBbox) '
                          'or give the annotation its own mask.'),
    'duplicate_annotation_id': ('warning', '`annotations[].id` is used more than once (pycocotools keeps '
                                'only the last, e.g. in COCO eval); exact copies dropped, other boxes kept. '
                                'Fix: give every annotation a unique id.'),
    'duplicate_category_name': ('warning', '`categories[].name` is used more than once; a name maps to '
                                'only one class. Fix: give every category a unique name.'),
    'unsorted_category_ids': ('info', 'category ids are not in ascending order; classes follow file order, '
                              'as in ppdet\'s COCODataSet (pycocotools getCatIds).'),
    'crowd_polygon': ('info', '`iscrowd: 1` annotations with polygons (COCO writes crowd regions as RLE); '
                      'kept: pycocotools converts them, ppdet ignores crowd regions in training.'),
    'crowd': ('info', '`iscrowd: 1` boxes; kept in the list, but ppdet ignores them in training.'),
    'dropped_with_image': ('info', 'annotations dropped because their image was skipped (see above).'),
    'empty_image': ('info', 'images without a usable non-crowd box; kept as background-only samples.'),
    'empty_image_skipped': ('info', 'images without a usable non-crowd box; skipped (skip_empty).'),
}


@dataclass
class Issue:
    """One kind of defect and where it occurs.

    Args:
        code (str): stable key from ``_MESSAGES``, e.g. ``'missing_image'``.
        message (str): what is wrong, which field, and the fix.
        count (int): number of occurrences (all of them, not only the examples).
        examples (list[dict]): the first occurrences, each with some of ``image_id``, ``ann_id``,
            ``file_name`` and ``value`` (the offending value or a short description).
    """
    code: str
    message: str
    count: int = 0
    examples: list = field(default_factory=list)


@dataclass
class Report:
    """Result of ``check_coco``: the defects found and the data that survives them.

    Args:
        ann_file (str): annotation file checked.
        image_dir (str): directory the ``file_name`` entries are relative to.
        max_examples (int): examples kept per issue.

    Attributes (filled by ``check_coco``):
        errors, warnings, infos (dict[str, Issue]): by code, in order of first occurrence. Errors make
            training impossible; warned entries are dropped or repaired in the lists below.
        images (list[dict]): usable ``images`` entries; ``width``/``height`` are the decoded size when the
            images were checked.
        annotations (list[dict]): usable ``annotations`` entries; ``bbox`` is [x, y, w, h] in pixels inside
            the image (clipped when ``clip_boxes``), ``area`` > 0. Crowd boxes are kept. With mask checks,
            ``segmentation`` is valid for the image and near the box (polygons without zero-area parts).
        catid2clsid (dict[int, int]): category id -> class index 0..num_classes-1, in file order.
        names (list[str]): category names by class index.
        num_classes (int): number of categories.
        num_file_images, num_file_annotations (int): entries in the file before cleaning.
    """
    ann_file: str
    image_dir: str
    max_examples: int = 5
    errors: dict = field(default_factory=dict)
    warnings: dict = field(default_factory=dict)
    infos: dict = field(default_factory=dict)
    images: list = field(default_factory=list)
    annotations: list = field(default_factory=list)
    catid2clsid: dict = field(default_factory=dict)
    names: list = field(default_factory=list)
    num_classes: int = 0
    num_file_images: int = 0
    num_file_annotations: int = 0

    @property
    def image_ids(self):
        return [im['id'] for im in self.images]

    def add(self, code, image_id=None, ann_id=None, file_name=None, value=None):
        """Counts one occurrence of ``code`` and keeps it as an example while there is room."""
        severity, message = _MESSAGES[code]
        bucket = {'error': self.errors, 'warning': self.warnings, 'info': self.infos}[severity]
        issue = bucket.setdefault(code, Issue(code, message))
        issue.count += 1
        if len(issue.examples) < self.max_examples:
            example = dict(image_id=image_id, ann_id=ann_id, file_name=file_name, value=value)
            issue.examples.append({k: v for k, v in example.items() if v is not None})

    def format(self):
        """Readable multi-line text: a summary, then every issue with its examples."""
        buckets = (('error', self.errors), ('warning', self.warnings), ('info', self.infos))
        totals = ', '.join(f'{sum(i.count for i in bucket.values())} {label}s' for label, bucket in buckets)
        lines = [f'COCO dataset check: {self.ann_file} (images in {self.image_dir})',
                 f'  file: {self.num_file_images} images, {self.num_file_annotations} annotations, '
                 f'{self.num_classes} categories; usable: {len(self.images)} images, '
                 f'{len(self.annotations)} annotations',
                 f'  {totals}']
        if self.names:
            shown = ', '.join(self.names[:10]) + (', ...' if len(self.names) > 10 else '')
            lines.append(f'  classes: {shown}')
        for label, bucket in buckets:
            for issue in bucket.values():
                lines.append(f'{label.upper()} [{issue.code}] x{issue.count}: {issue.message}')
                lines += ['    ' + _format_example(example) for example in issue.examples]
                if issue.count > len(issue.examples):
                    lines.append(f'    ... and {issue.count - len(issue.examples)} more')
        return '\n'.join(lines)

    def to_records(self, load_crowd=False, load_segm=False):
        """ppdet ``COCODataSet.roidbs`` built from the cleaned lists.

        Args:
            load_crowd (bool): keep ``iscrowd`` boxes, as ``COCODataSet(load_crowd=...)``.
            load_segm (bool): add ``gt_poly`` (the masks' source, for ppdet's ``Poly2Mask``).

        Returns:
            list[dict]: one record per usable image in ascending id order (as ppdet): ``im_file``,
            ``im_id`` int64 [1], ``h``/``w`` float, ``gt_class`` int32 [n, 1] in 0..num_classes-1,
            ``gt_bbox`` float32 [n, 4] xyxy pixels, ``is_crowd`` int32 [n, 1], and with ``load_segm``
            ``gt_poly``: the n COCO ``segmentation`` values (polygons or RLE) as written; a crowd object gets
            ppdet's all-zero polygon (an empty mask), as ppdet's ``COCODataSet``. ``n`` may be 0.

        Raises:
            ValueError: with ``load_segm``, a non-crowd object has no ``segmentation``; names the file, image
                and annotation.
        """
        by_image = {im['id']: [] for im in self.images}
        for ann in self.annotations:
            if load_crowd or not ann.get('iscrowd'):
                by_image[ann['image_id']].append(ann)
        records = []
        for im in sorted(self.images, key=lambda im: im['id']):
            anns = by_image[im['id']]
            xywh = np.array([a['bbox'] for a in anns], np.float32).reshape(-1, 4)
            records.append({
                'im_file': os.path.join(self.image_dir, im['file_name']),
                'im_id': np.array([im['id']]),
                'h': float(im['height']),
                'w': float(im['width']),
                'gt_class': np.array([[self.catid2clsid[a['category_id']]] for a in anns],
                                     np.int32).reshape(-1, 1),
                # [n, 4] xywh -> xyxy
                'gt_bbox': np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                'is_crowd': np.array([[int(bool(a.get('iscrowd')))] for a in anns], np.int32).reshape(-1, 1),
            })
            if load_segm:
                records[-1]['gt_poly'] = [self._segmentation(a, im) for a in anns]
        return records


    def _segmentation(self, ann, image):
        if ann.get('iscrowd'):
            return _CROWD_POLYGON
        if not ann.get('segmentation'):
            raise ValueError(f'{self.ann_file}: annotation id={ann["id"]} of image id={image["id"]} '
                             f'({image["file_name"]!r}) has no segmentation; a mask model needs one per object')
        return ann['segmentation']


class DatasetError(ValueError):
    """Raised when the dataset cannot be trained on.

    Args:
        report (Report): the full report; ``str(error)`` is ``report.format()``.
    """

    def __init__(self, report):
        super().__init__(report.format())
        self.report = report


def _format_example(example):
    # Descriptions in `value` read better unquoted; ids and file names keep repr to show their type.
    return ' '.join(f'{k}={v}' if k == 'value' and isinstance(v, str) else f'{k}={v!r}'
                    for k, v in example.items())
