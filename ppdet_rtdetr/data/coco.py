"""``RTDETRCOCODataSet``: ppdet's ``COCODataSet`` that checks its annotation file when it is loaded.

ppdet's ``COCODataSet`` trusts the file: a NaN box, a truncated JPEG or a ``num_classes`` that differs from
the categories surfaces thousands of iterations in, as a NaN loss or a crash far from its cause. This
subclass runs ``check_coco`` (the checks of ``tools/check_dataset.py``) in ``parse_dataset``, which the
Trainer calls when it builds the reader, i.e. at the start of every training and evaluation run:

* errors (``num_classes`` mismatch, duplicate ids, no usable image, ...) raise ``DatasetError`` with the
  full report before the model is built, so nothing is trained or written;
* bad entries are skipped or repaired and the report is logged as one warning block;
* category ids may follow any scheme (0-based, 1-based, sparse): classes follow the file's category order,
  as in ppdet's ``COCODataSet`` and in the ``catid2clsid`` ppdet's eval / infer read from the same file,
  so predictions are written back with the file's own ``category_id``s.
"""
import os

from ppdet.core import workspace
from ppdet.core.workspace import register, serializable
from ppdet.data.source.coco import COCODataSet
from ppdet.utils.logger import setup_logger

from .check import check_coco

logger = setup_logger(__name__)

__all__ = ['RTDETRCOCODataSet']

# Record keys ppdet's COCODataSet always writes; the ground-truth keys are kept only when in data_fields.
_IMAGE_KEYS = ('im_file', 'im_id', 'h', 'w')


@register
@serializable
class RTDETRCOCODataSet(COCODataSet):
    """COCO detection data, checked and cleaned by ``check_coco`` before use.

    Args:
        dataset_dir (str): root directory of the dataset.
        image_dir (str): image directory, relative to ``dataset_dir``.
        anno_path (str): COCO annotation JSON, relative to ``dataset_dir``.
        data_fields (list[str]): record keys to load; ``image`` plus any of ``gt_bbox``, ``gt_class``,
            ``is_crowd``, ``gt_poly`` (the COCO segmentations, polygons or RLE, for ``Poly2Mask``).
        sample_num (int): load only the first ``sample_num`` usable images (by image id); -1 loads all.
        load_crowd (bool): keep ``iscrowd`` boxes in the records.
        allow_empty (bool): keep images without a usable non-crowd box (false skips them).
        empty_ratio (float): as ppdet: share of empty images to sample when in [0, 1); else keep all.
        repeat (int): repeat the dataset this many times per epoch.
        check (bool): run ``check_coco``; false falls back to ppdet's ``COCODataSet`` parser unchanged.
        clip_boxes (bool): clip boxes that leave the image (true) or skip them (false).
        check_images (bool): decode every image to find missing / corrupt files and the true size (~8 ms
            per 640x480 JPEG); false trusts the stored sizes and does not look for the files.
        num_classes (int|None): expected number of categories; None takes the config's top-level
            ``num_classes`` (the one the model head is built with).
    """

    def __init__(self,
                 dataset_dir=None,
                 image_dir=None,
                 anno_path=None,
                 data_fields=['image'],
                 sample_num=-1,
                 load_crowd=False,
                 allow_empty=False,
                 empty_ratio=1.,
                 repeat=1,
                 check=True,
                 clip_boxes=True,
                 check_images=True,
                 num_classes=None):
        super().__init__(dataset_dir, image_dir, anno_path, data_fields, sample_num, load_crowd,
                         allow_empty, empty_ratio, repeat)
        self.check = check
        self.clip_boxes = clip_boxes
        self.check_images = check_images
        self.num_classes = num_classes

    def parse_dataset(self):
        if not self.check:
            return super().parse_dataset()
        anno_path = os.path.join(self.dataset_dir, self.anno_path)
        image_dir = os.path.join(self.dataset_dir, self.image_dir)
        # Read at parse time, not in __init__: the YAML tag builds this object before `-o num_classes=..`
        # and later _BASE_ files are merged.
        num_classes = self.num_classes
        if num_classes is None:
            num_classes = workspace.global_config.get('num_classes')
        report = check_coco(anno_path, image_dir, num_classes=num_classes, clip_boxes=self.clip_boxes,
                            skip_empty=not self.allow_empty, check_images=self.check_images)
        (logger.warning if report.warnings else logger.info)(report.format())

        self.catid2clsid = dict(report.catid2clsid)
        self.cname2cid = {name: clsid for clsid, name in enumerate(report.names)}
        records = report.to_records(load_crowd=self.load_crowd, load_segm='gt_poly' in self.data_fields)
        if self.sample_num > 0:
            records = records[:self.sample_num]
        # Without allow_empty, check_coco already skipped the images without a box.
        with_boxes = [r for r in records if len(r['gt_bbox'])]
        empty = [r for r in records if not len(r['gt_bbox'])]
        if empty:
            empty = self._sample_empty(empty, len(with_boxes))
        keys = (_IMAGE_KEYS if 'image' in self.data_fields else ()) + tuple(self.data_fields)
        self.roidbs = [{k: v for k, v in r.items() if k in keys} for r in with_boxes + empty]
