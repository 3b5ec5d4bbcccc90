"""check_coco(masks=...): one tiny instance-segmentation set per defect of `segmentation`; each issue names the
image, the annotation, the field and the value, and box-only datasets are checked exactly as before.

Stored image sizes are trusted (check_images=False): no image file is written, the checks are on the JSON.
"""
import importlib.util
import json
import math
import os

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ppdet_rtdetr.data.check import check_coco
from ppdet_rtdetr.data.check_segm import rle_string_counts

W, H = 40, 30  # every image: non-square, so a swapped RLE size shows
TOOL = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'check_dataset.py')


def _mask(x1, y1, x2, y2):
    """Binary mask [H, W] of the pixel rectangle [x1, x2) x [y1, y2), Fortran order for pycocotools."""
    m = np.zeros((H, W), np.uint8, order='F')
    m[y1:y2, x1:x2] = 1
    return m


def _runs(mask):
    """Uncompressed COCO runs of `mask`, computed here: column-major, starting with a (maybe empty) 0 run."""
    flat = np.asarray(mask).flatten(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def _compressed(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    return {'size': rle['size'], 'counts': rle['counts'].decode()}


def _ann(ann_id, segmentation, bbox, iscrowd=0, image_id=1):
    ann = dict(id=ann_id, image_id=image_id, category_id=1, bbox=bbox, area=bbox[2] * bbox[3], iscrowd=iscrowd)
    if segmentation is not None:
        ann['segmentation'] = segmentation
    return ann


def _clean():
    """2 images, a polygon with two parts, a compressed RLE, an uncompressed RLE and a crowd RLE: no defect."""
    return {
        'images': [dict(id=1, file_name='a.jpg', width=W, height=H), dict(id=2, file_name='b.jpg', width=W, height=H)],
        'annotations': [
            _ann(10, [[2, 3, 12, 3, 12, 11, 2, 11], [14, 3, 16, 3, 16, 5]], [2, 3, 14, 8]),
            _ann(11, _compressed(_mask(20, 5, 30, 25)), [20, 5, 10, 20]),
            _ann(12, {'size': [H, W], 'counts': _runs(_mask(0, 0, 8, 6))}, [0, 0, 8, 6], image_id=2),
            _ann(13, _compressed(_mask(10, 10, 40, 30)), [10, 10, 30, 20], iscrowd=1, image_id=2),
        ],
        'categories': [dict(id=1, name='thing')],
    }


def _check(tmp_path, coco, masks='auto', **kwargs):
    ann_file = tmp_path / 'ann.json'
    ann_file.write_text(json.dumps(coco))  # json writes NaN, as broken exporters do
    return check_coco(str(ann_file), str(tmp_path), check_images=False, masks=masks, **kwargs)


def _with(*anns):
    coco = _clean()
    coco['annotations'] += list(anns)
    return coco


def _kept(report):
    return [a['id'] for a in report.annotations]


def _where(ann_id, value, image_id=1, file_name='a.jpg'):
    return {'image_id': image_id, 'ann_id': ann_id, 'file_name': file_name, 'value': value}


def test_clean_instance_set_has_no_issue_but_its_crowd_region(tmp_path):
    report = _check(tmp_path, _clean())
    assert (report.errors, report.warnings, list(report.infos)) == ({}, {}, ['crowd'])
    assert _kept(report) == [10, 11, 12, 13]
    assert [a['segmentation'] for a in report.annotations] == [a['segmentation'] for a in _clean()['annotations']]


def test_the_runs_of_a_compressed_string_equal_the_masks_runs():
    """rle_string_counts against runs computed from the mask itself, on random masks (long runs need several
    5-bit digits; runs after the third are stored as differences, negative ones too)."""
    rng = np.random.default_rng(0)
    for density in (0.02, 0.5, 0.98):
        mask = np.asfortranarray((rng.random((H, W)) < density).astype(np.uint8))
        assert rle_string_counts(_compressed(mask)['counts']) == _runs(mask)
    assert rle_string_counts(_compressed(_mask(0, 0, W, H))['counts']) == [0, W * H]
    assert rle_string_counts('0\x7f') is None and rle_string_counts('0P') is None  # bad character, cut short


def test_box_only_datasets_are_checked_as_before(tmp_path):
    """Exporters of detection sets write `segmentation: []`: 'auto' leaves such a set alone, and masks=False
    (check_coco's default, what training uses) never reads `segmentation`, however broken."""
    boxes = _clean()
    for ann in boxes['annotations']:
        ann['segmentation'] = []
    report = _check(tmp_path, boxes)
    assert (report.warnings, list(report.infos), _kept(report)) == ({}, ['crowd'], [10, 11, 12, 13])
    broken = _with(_ann(20, 'junk', [1, 1, 4, 4]), _ann(21, [[1, 2, 3]], [1, 1, 4, 4]))
    report = _check(tmp_path, broken, masks=False)
    assert (report.warnings, _kept(report)) == ({}, [10, 11, 12, 13, 20, 21])
    assert report.annotations[4]['segmentation'] == 'junk'


def test_malformed_polygons_are_skipped_naming_the_part_and_value(tmp_path):
    report = _check(tmp_path, _with(
        _ann(20, [[1, 1, 5, 1, 5]], [1, 1, 4, 4]),
        _ann(21, [[1, 1, 5, 1]], [1, 1, 4, 4]),
        _ann(22, [[1, 1, 5, 1, 5, 5], [1, 'x', 5, 1, 5, 5]], [1, 1, 4, 4]),
        _ann(23, [[1, 1, math.nan, 1, 5, 5]], [1, 1, 4, 4]),
        _ann(24, [1, 1, 5, 1, 5, 5], [1, 1, 4, 4]),  # flat: not a list of polygons
        _ann(25, 'RLE', [1, 1, 4, 4])), max_examples=6)
    assert report.warnings['malformed_segmentation'].examples == [
        _where(20, 'segmentation[0] = [1, 1, 5, 1, 5]: 5 numbers (x, y pairs, at least 3 points)'),
        _where(21, 'segmentation[0] = [1, 1, 5, 1]: 4 numbers (x, y pairs, at least 3 points)'),
        _where(22, "segmentation[1] = [1, 'x', 5, 1, 5, 5]: not a list of numbers"),
        _where(23, 'segmentation[0] = [1, 1, nan, 1, 5, 5]: NaN or inf'),
        _where(24, 'segmentation[0] = 1: not a list of numbers'),
        _where(25, "'RLE': neither polygons nor an RLE dict")]
    assert _kept(report) == [10, 11, 12, 13]
    assert 'WARNING [malformed_segmentation] x6: `segmentation` is neither polygons' in report.format()
    assert "image_id=1 ann_id=25 file_name='a.jpg' value='RLE': neither polygons nor an RLE dict" in report.format()


def test_a_non_crowd_annotation_without_a_mask_is_skipped_a_crowd_one_kept(tmp_path):
    report = _check(tmp_path, _with(
        _ann(20, [], [1, 1, 4, 4]), _ann(21, [[]], [1, 1, 4, 4]), _ann(22, None, [1, 1, 4, 4]),
        _ann(23, _compressed(_mask(0, 0, 0, 0)), [1, 1, 4, 4]),
        _ann(24, [], [1, 1, 4, 4], iscrowd=1), _ann(25, None, [1, 1, 4, 4], iscrowd=1)))
    assert report.warnings['empty_segmentation'].examples == [
        _where(20, 'segmentation=[]'), _where(21, 'segmentation=[[]]'), _where(22, 'no segmentation'),
        _where(23, 'an RLE without a foreground pixel')]
    assert _kept(report) == [10, 11, 12, 13, 24, 25]
    assert 'segmentation' not in report.annotations[-1], 'a missing field stays missing'


def test_zero_area_polygons_are_dropped_and_the_annotation_with_the_last(tmp_path):
    line = [1, 1, 5, 5, 9, 9]  # collinear
    point = [3, 3, 3, 3, 3, 3]
    square = [20, 20, 24, 20, 24, 24, 20, 24]
    report = _check(tmp_path, _with(_ann(20, [line, point], [1, 1, 8, 8]), _ann(21, [square, line], [20, 20, 4, 4])))
    assert report.warnings['degenerate_polygon'].examples == [
        _where(20, 'segmentation[0] = [1, 1, 5, 5, 9, 9]: area 0'), _where(20, 'segmentation[1] = [3, 3, 3, 3, 3, 3]: '
                                                                            'area 0'),
        _where(21, 'segmentation[1] = [1, 1, 5, 5, 9, 9]: area 0')]
    assert _kept(report) == [10, 11, 12, 13, 21]
    assert report.annotations[-1]['segmentation'] == [square]


def test_polygons_outside_the_image_are_kept_when_clipping_and_skipped_otherwise(tmp_path):
    on_edge = [0, 0, W + 0.5, 0, W + 0.5, H + 1, 0, H + 1]  # within the 1-pixel tolerance: no issue
    past = [30, 20, W + 5, 20, W + 5, H + 8, 30, H + 8]
    coco = _with(_ann(20, [on_edge], [0, 0, W, H]), _ann(21, [past], [30, 20, 10, 10]))
    report = _check(tmp_path, coco)
    assert report.warnings['segmentation_clipped'].examples == [
        _where(21, f'3 of 4 points outside the {W}x{H} image, e.g. (45, 38)')]
    assert _kept(report) == [10, 11, 12, 13, 20, 21]
    report = _check(tmp_path, coco, clip_boxes=False)
    assert report.warnings['segmentation_outside_image'].count == 1 and _kept(report) == [10, 11, 12, 13, 20]


def test_rle_of_another_size_is_skipped(tmp_path):
    swapped = {'size': [W, H], 'counts': _runs(np.zeros((W, H), np.uint8))}
    other = _compressed(np.ones((H + 2, W), np.uint8))
    report = _check(tmp_path, _with(_ann(20, swapped, [1, 1, 4, 4]), _ann(21, other, [0, 0, W, H])))
    assert report.warnings['rle_size_mismatch'].examples == [
        _where(20, f'RLE size [{W}, {H}] in a {W}x{H} image, i.e. [{H}, {W}] (swapped: size is [h, w])'),
        _where(21, f'RLE size [{H + 2}, {W}] in a {W}x{H} image, i.e. [{H}, {W}]')]
    assert _kept(report) == [10, 11, 12, 13]


def test_rle_whose_runs_do_not_cover_the_image_is_skipped_before_pycocotools_reads_it(tmp_path):
    short = {'size': [H, W], 'counts': [100, 50]}
    negative = {'size': [H, W], 'counts': [W * H + 5, -5]}
    # a compressed string of a taller mask, claimed at the image size: its runs overrun the mask by W pixels
    overrun = dict(_compressed(np.ones((H + 1, W), np.uint8)), size=[H, W])
    bad_char = {'size': [H, W], 'counts': '0 1'}
    report = _check(tmp_path, _with(*[_ann(20 + i, s, [0, 0, W, H]) for i, s in
                                      enumerate([short, negative, overrun, bad_char])]))
    assert report.warnings['bad_rle'].examples == [
        _where(20, f'2 runs summing to 150, negative: False; size [{H}, {W}] needs {H * W} pixels'),
        _where(21, f'2 runs summing to {H * W}, negative: True; size [{H}, {W}] needs {H * W} pixels'),
        _where(22, f'2 runs summing to {(H + 1) * W}, negative: False; size [{H}, {W}] needs {H * W} pixels'),
        _where(23, "counts '0 1': not a COCO compressed RLE string")]
    assert _kept(report) == [10, 11, 12, 13]


def test_a_mask_far_from_its_box_is_skipped_with_the_iou(tmp_path):
    """IoU of the mask's box and `bbox`, against the formula by hand: a polygon box [2, 2, 10, 10] vs bbox
    [7, 2, 10, 10] overlaps 5x10 of 150 (1/3); an RLE box [0, 0, 10, 10] vs [0, 0, 10, 20] is 0.5 (kept)."""
    report = _check(tmp_path, _with(
        _ann(20, [[2, 2, 12, 2, 12, 12, 2, 12]], [7, 2, 10, 10]),
        _ann(21, _compressed(_mask(0, 0, 10, 10)), [0, 0, 10, 20]),
        _ann(22, _compressed(_mask(30, 20, 40, 30)), [0, 0, 10, 10])))
    assert report.warnings['mask_box_mismatch'].examples == [
        _where(20, 'mask box [2.0, 2.0, 10.0, 10.0], bbox [7.0, 2.0, 10.0, 10.0]: IoU 0.33'),
        _where(22, 'mask box [30.0, 20.0, 10.0, 10.0], bbox [0.0, 0.0, 10.0, 10.0]: IoU 0.00')]
    assert _kept(report) == [10, 11, 12, 13, 21]


def test_crowd_polygons_are_an_info_and_kept(tmp_path):
    report = _check(tmp_path, _with(_ann(20, [[2, 2, 12, 2, 12, 12]], [2, 2, 10, 10], iscrowd=1)))
    assert report.infos['crowd_polygon'].examples == [{'image_id': 1, 'ann_id': 20, 'file_name': 'a.jpg'}]
    assert report.warnings == {} and _kept(report) == [10, 11, 12, 13, 20]


def test_tool_checks_masks_of_an_instance_set_unless_told_off(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('check_dataset', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ann_file = tmp_path / 'ann.json'
    ann_file.write_text(json.dumps(_with(_ann(20, [], [1, 1, 4, 4]))))
    (tmp_path / 'images').mkdir()
    for name in ('a.jpg', 'b.jpg'):
        cv2.imwrite(str(tmp_path / 'images' / name), np.zeros((H, W, 3), np.uint8))
    args = ['--ann', str(ann_file), '--image_dir', str(tmp_path / 'images')]
    # a mask problem is a warning (the annotation is skipped), not an error: exit 0
    assert tool.main(args) == 0
    assert "WARNING [empty_segmentation] x1" in capsys.readouterr().out
    assert tool.main(args + ['--masks', 'off']) == 0
    assert 'segmentation' not in capsys.readouterr().out
