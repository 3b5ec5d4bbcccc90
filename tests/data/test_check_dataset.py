"""check_coco: one small broken dataset per defect; the report names it and the good entries survive."""
import importlib.util
import json
import math
import os

import cv2
import numpy as np
import pytest

from ppdet_rtdetr.data.check import DatasetError, check_coco

TOOL = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'check_dataset.py')


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    return dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox,
                area=bbox[2] * bbox[3], iscrowd=iscrowd)


def _clean():
    """2 images (non-square, different sizes), 2 categories, 3 boxes: no defect at all."""
    return {
        'images': [dict(id=1, file_name='a.jpg', width=32, height=24),
                   dict(id=2, file_name='b.png', width=40, height=30)],
        'annotations': [_ann(10, 1, 1, [2, 3, 10, 8]), _ann(11, 1, 2, [0, 0, 32, 24]),
                        _ann(12, 2, 1, [5, 5, 20, 10])],
        'categories': [dict(id=1, name='cat'), dict(id=2, name='dog')],
    }


def _write(tmp_path, coco, files=None):
    """Writes the JSON and one noise image per entry (or per ``files``: name -> (w, h))."""
    image_dir = tmp_path / 'images'
    image_dir.mkdir()
    if files is None:
        files = {im['file_name']: (im['width'], im['height']) for im in coco['images']}
    rng = np.random.default_rng(0)
    for name, (w, h) in files.items():
        assert cv2.imwrite(str(image_dir / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    ann_file = tmp_path / 'ann.json'
    ann_file.write_text(json.dumps(coco))  # json writes NaN / Infinity, as broken exporters do
    return str(ann_file), str(image_dir)


def _check(tmp_path, coco, files=None, **kwargs):
    return check_coco(*_write(tmp_path, coco, files), **kwargs)


def _errors(tmp_path, coco, files=None, **kwargs):
    with pytest.raises(DatasetError) as info:
        _check(tmp_path, coco, files, **kwargs)
    return info.value.report, str(info.value)


def test_clean_dataset_has_no_issue_and_builds_ppdet_records(tmp_path):
    report = _check(tmp_path, _clean())
    assert (report.errors, report.warnings, report.infos) == ({}, {}, {})
    assert report.image_ids == [1, 2]
    assert [a['id'] for a in report.annotations] == [10, 11, 12]
    assert report.catid2clsid == {1: 0, 2: 1}
    assert report.names == ['cat', 'dog'] and report.num_classes == 2
    records = report.to_records()
    assert [(r['im_id'][0], r['w'], r['h']) for r in records] == [(1, 32., 24.), (2, 40., 30.)]
    np.testing.assert_array_equal(records[0]['gt_bbox'], [[2, 3, 12, 11], [0, 0, 32, 24]])
    np.testing.assert_array_equal(records[0]['gt_class'], [[0], [1]])
    assert records[0]['im_file'] == os.path.join(report.image_dir, 'a.jpg')
    assert '0 errors, 0 warnings, 0 infos' in report.format()


@pytest.mark.parametrize('content, code', [(None, 'ann_file_missing'), ('{"images": [', 'ann_file_not_json')])
def test_unreadable_annotation_file_is_an_error(tmp_path, content, code):
    ann_file = tmp_path / 'ann.json'
    if content is not None:
        ann_file.write_text(content)
    with pytest.raises(DatasetError) as info:
        check_coco(str(ann_file), str(tmp_path))
    issue = info.value.report.errors[code]
    assert issue.count == 1 and issue.examples[0]['file_name'] == str(ann_file)
    assert f'ERROR [{code}] x1' in str(info.value) and str(ann_file) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_top_level_keys_are_listed(tmp_path):
    coco = _clean()
    del coco['annotations']
    coco['categories'] = {'1': 'cat'}
    report, text = _errors(tmp_path, coco)
    assert [e['value'] for e in report.errors['missing_key'].examples] == ['annotations', 'categories']
    assert 'needs `images`, `annotations` and `categories` lists' in text


def test_missing_and_corrupt_images_are_skipped_with_their_annotations(tmp_path):
    coco = _clean()
    coco['images'] += [dict(id=3, file_name='gone.jpg', width=8, height=8),
                       dict(id=4, file_name='junk.jpg', width=8, height=8),
                       dict(id=5, file_name='cut.jpg', width=64, height=48)]
    coco['annotations'] += [_ann(13, 3, 1, [0, 0, 4, 4]), _ann(14, 5, 1, [0, 0, 4, 4])]
    ann_file, image_dir = _write(tmp_path, coco, {'a.jpg': (32, 24), 'b.png': (40, 30), 'cut.jpg': (64, 48)})
    with open(os.path.join(image_dir, 'junk.jpg'), 'wb') as f:
        f.write(b'not an image')
    cut = os.path.join(image_dir, 'cut.jpg')
    with open(cut, 'rb') as f:
        data = f.read()
    with open(cut, 'wb') as f:
        f.write(data[:len(data) * 2 // 3])
    report = check_coco(ann_file, image_dir)
    missing = report.warnings['missing_image']
    assert missing.count == 1 and missing.examples[0]['value'] == f'no file {image_dir}/gone.jpg'
    corrupt = report.warnings['corrupt_image']
    assert [(e['file_name'], e['value']) for e in corrupt.examples] == [
        ('junk.jpg', 'cv2 cannot decode it'), ('cut.jpg', 'truncated JPEG (no end-of-image marker)')]
    assert report.infos['dropped_with_image'].examples == [
        {'image_id': 3, 'ann_id': 13, 'file_name': 'gone.jpg'},
        {'image_id': 5, 'ann_id': 14, 'file_name': 'cut.jpg'}]
    assert report.image_ids == [1, 2] and [a['id'] for a in report.annotations] == [10, 11, 12]


@pytest.mark.parametrize('params', [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
                                    [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]])
def test_jpeg_end_marker_is_found_past_thumbnails_scans_and_restarts(params):
    from ppdet_rtdetr.data.check import _jpeg_is_complete
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    main = cv2.imencode('.jpg', noise, params)[1].tobytes()
    # An APP1 segment holding a whole JPEG (an EXIF thumbnail) with its own end marker.
    app1 = b'\xff\xe1' + (len(main) + 2).to_bytes(2, 'big') + main
    with_thumb = main[:2] + app1 + main[2:]
    assert _jpeg_is_complete(main) and _jpeg_is_complete(with_thumb)
    cuts = (len(with_thumb) - 2, len(with_thumb) // 2, 100)
    assert not any(_jpeg_is_complete(with_thumb[:n]) for n in cuts)


def test_stored_size_that_disagrees_with_the_file_is_replaced(tmp_path):
    coco = _clean()
    coco['images'][0].update(width=24, height=32)  # the file is 32x24: swapped, as EXIF rotation does
    coco['images'][1].update(width=400)
    report = _check(tmp_path, coco, files={'a.jpg': (32, 24), 'b.png': (40, 30)})
    issue = report.warnings['size_mismatch']
    assert [e['value'] for e in issue.examples] == ['stored 24x32, file 32x24 (swapped)',
                                                   'stored 400x30, file 40x30']
    assert [(im['width'], im['height']) for im in report.images] == [(32., 24.), (40., 30.)]
    # The box [0, 0, 32, 24] fits the real size, so nothing is clipped.
    assert 'box_clipped' not in report.warnings


def test_degenerate_and_non_finite_boxes_are_skipped(tmp_path):
    coco = _clean()
    coco['annotations'] += [_ann(20, 1, 1, [1, 1, 0, 5]), _ann(21, 1, 1, [1, 1, 5, -2]),
                            _ann(22, 1, 1, [math.nan, 1, 5, 5]),
                            dict(_ann(23, 2, 1, [1, 1, 5, 5]), area=math.inf),
                            dict(_ann(24, 2, 1, [1, 1, 5, 5]), bbox=[1, 1, 5]),
                            dict(_ann(25, 2, 1, [1, 1, 5, 5]), bbox=[1, 1, 5, 'x'])]
    report = _check(tmp_path, coco)
    assert [e['value'] for e in report.warnings['degenerate_box'].examples] == [[1, 1, 0, 5], [1, 1, 5, -2]]
    assert [e['ann_id'] for e in report.warnings['non_finite_box'].examples] == [22, 23]
    assert report.warnings['non_finite_box'].examples[1]['value'] == 'bbox=[1, 1, 5, 5] area=inf'
    assert report.warnings['malformed_annotation'].count == 2
    assert 'not [x1, y1, x2, y2]' in report.format()
    assert [a['id'] for a in report.annotations] == [10, 11, 12]


def test_boxes_outside_the_image_are_clipped_or_rejected(tmp_path):
    coco = _clean()
    coco['annotations'] += [_ann(30, 1, 1, [-4, 20, 10, 10]), _ann(31, 1, 1, [40, 0, 5, 5]),
                            _ann(32, 1, 1, [0, 0, 32.0001, 24]),  # float rounding: silently clipped
                            _ann(33, 1, 1, [32, 0, 0.0001, 5])]  # empty once rounding is clipped
    report = _check(tmp_path, coco)
    clipped = report.warnings['box_clipped']
    assert clipped.count == 1
    assert clipped.examples[0]['value'] == '[-4, 20, 10, 10] in a 32x24 image -> [0.0, 20.0, 6.0, 4.0]'
    assert [e['ann_id'] for e in report.warnings['box_empty_after_clip'].examples] == [31, 33]
    by_id = {a['id']: a['bbox'] for a in report.annotations}
    assert by_id[30] == [0., 20., 6., 4.] and by_id[32] == [0., 0., 32., 24.]
    assert 31 not in by_id and 33 not in by_id

    rejected = check_coco(str(tmp_path / 'ann.json'), str(tmp_path / 'images'), clip_boxes=False)
    assert rejected.warnings['box_outside_image'].count == 2
    assert 'box_clipped' not in rejected.warnings
    assert sorted(a['id'] for a in rejected.annotations) == [10, 11, 12, 32]


def test_missing_image_dir_is_one_error_and_stored_sizes_are_still_checked(tmp_path):
    coco = _clean()
    coco['annotations'].append(_ann(13, 2, 1, [30, 0, 20, 5]))
    ann_file, _ = _write(tmp_path, coco)
    with pytest.raises(DatasetError) as info:
        check_coco(ann_file, str(tmp_path / 'imgs'))
    report = info.value.report
    assert report.errors['image_dir_missing'].examples == [{'file_name': str(tmp_path / 'imgs')}]
    assert 'missing_image' not in report.warnings and report.warnings['box_clipped'].count == 1


def test_duplicate_image_and_category_ids_are_errors(tmp_path):
    coco = _clean()
    coco['images'].append(dict(id=2, file_name='a.jpg', width=32, height=24))
    coco['categories'].append(dict(id=2, name='bird'))
    report, text = _errors(tmp_path, coco)
    assert report.errors['duplicate_image_id'].examples == [{'image_id': 2, 'file_name': 'a.jpg'}]
    assert report.errors['duplicate_category_id'].examples == [{'value': 2}]
    assert 'Fix: give every image a unique id.' in text and 'Fix: give every category a unique id.' in text
    # The first entries win, so the rest of the report is still meaningful.
    assert report.names == ['cat', 'dog'] and report.image_ids == [1, 2]


def test_bad_annotation_links_are_skipped(tmp_path):
    coco = _clean()
    coco['annotations'] += [_ann(10, 2, 2, [1, 1, 4, 4]), _ann(10, 1, 1, [2, 3, 10, 8]),  # dup ids
                            _ann(40, 99, 1, [1, 1, 4, 4]), _ann(41, 1, 7, [1, 1, 4, 4])]
    report = _check(tmp_path, coco)
    dup = report.warnings['duplicate_annotation_id']
    assert [e['value'] for e in dup.examples] == ['different box', 'exact copy']
    assert report.warnings['unknown_image_id'].examples == [{'image_id': 99, 'ann_id': 40}]
    assert report.warnings['unknown_category_id'].examples == [
        {'image_id': 1, 'ann_id': 41, 'file_name': 'a.jpg', 'value': 7}]
    assert [a['id'] for a in report.annotations] == [10, 11, 12, 10]


def test_num_classes_mismatch_names_both_numbers_and_the_key(tmp_path):
    report, text = _errors(tmp_path, _clean(), num_classes=80)
    assert report.errors['num_classes_mismatch'].examples[0]['value'] == (
        'num_classes=80, categories in the file=2')
    assert 'Fix: set `num_classes` in the config to the number of categories.' in text
    assert list(report.errors) == ['num_classes_mismatch'] and report.warnings == {}


def test_empty_datasets_are_errors(tmp_path):
    coco = _clean()
    coco['images'] = []
    no_images = tmp_path / 'no_images'
    no_images.mkdir()
    report, _ = _errors(no_images, coco)
    assert list(report.errors) == ['no_images']
    assert report.warnings['unknown_image_id'].count == 3

    coco = _clean()
    for ann in coco['annotations']:
        ann['bbox'] = [0, 0, 0, 0]
    report, text = _errors(tmp_path, coco)
    assert list(report.errors) == ['no_annotations']
    assert report.warnings['degenerate_box'].count == 3
    assert report.infos['empty_image'].count == 2
    assert 'ERROR [no_annotations] x1: no usable non-crowd annotation left' in text


def test_category_id_schemes_map_to_classes_in_file_order(tmp_path):
    coco = _clean()
    coco['categories'] = [dict(id=0, name='person on bike'), dict(id=90, name='自行车'),
                          dict(id=7, name='x')]
    coco['annotations'] = [_ann(10, 1, 90, [1, 1, 4, 4]), _ann(11, 2, 0, [1, 1, 4, 4]),
                           _ann(12, 2, 7, [1, 1, 4, 4])]
    report = _check(tmp_path, coco, num_classes=3)
    assert report.catid2clsid == {0: 0, 90: 1, 7: 2}
    assert report.names == ['person on bike', '自行车', 'x']
    assert report.infos['unsorted_category_ids'].examples == [{'value': [0, 90, 7]}]
    assert report.warnings == {}
    assert [r['gt_class'].ravel().tolist() for r in report.to_records()] == [[1], [0, 2]]


def test_crowd_boxes_are_counted_and_left_out_of_training_records(tmp_path):
    coco = _clean()
    coco['annotations'].append(_ann(50, 2, 2, [0, 0, 8, 8], iscrowd=1))
    report = _check(tmp_path, coco)
    assert report.infos['crowd'].count == 1 and report.warnings == {}
    assert len(report.to_records()[1]['gt_bbox']) == 1
    assert report.to_records(load_crowd=True)[1]['is_crowd'].ravel().tolist() == [0, 1]


def test_empty_images_are_kept_or_skipped(tmp_path):
    coco = _clean()
    coco['annotations'] = coco['annotations'][:2]  # image 2 has no box left
    ann_file, image_dir = _write(tmp_path, coco)
    kept = check_coco(ann_file, image_dir)
    assert kept.image_ids == [1, 2] and kept.infos['empty_image'].examples == [
        {'image_id': 2, 'file_name': 'b.png'}]
    assert kept.to_records()[1]['gt_bbox'].shape == (0, 4)
    skipped = check_coco(ann_file, image_dir, skip_empty=True)
    assert skipped.image_ids == [1] and skipped.infos['empty_image_skipped'].count == 1


def test_missing_area_is_filled_and_stored_sizes_used_without_image_check(tmp_path):
    coco = _clean()
    del coco['annotations'][0]['area']
    coco['images'][1]['height'] = 0
    report = _check(tmp_path, coco, files={}, check_images=False)
    assert report.warnings['bad_area'].examples == [{'image_id': 1, 'ann_id': 10, 'file_name': 'a.jpg'}]
    assert report.annotations[0]['area'] == 80.
    assert report.warnings['bad_image_entry'].examples[0]['value'] == '40x0'
    assert report.image_ids == [1]


def test_examples_are_capped_but_counts_are_not(tmp_path):
    coco = _clean()
    coco['annotations'] += [_ann(100 + i, 1, 1, [1, 1, -1, 1]) for i in range(7)]
    report = _check(tmp_path, coco, max_examples=2)
    issue = report.warnings['degenerate_box']
    assert issue.count == 7 and len(issue.examples) == 2
    assert '    ... and 5 more' in report.format()


def _tool():
    spec = importlib.util.spec_from_file_location('check_dataset', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_exit_codes_and_config_form(tmp_path, capsys, monkeypatch):
    from ppdet.core import workspace
    # load_config merges into ppdet's process-wide config; give it a copy so other tests never see ours.
    snapshot = workspace.AttrDict()
    snapshot.update(workspace.global_config)
    monkeypatch.setattr(workspace, 'global_config', snapshot)
    ann_file, image_dir = _write(tmp_path, _clean())
    tool = _tool()
    assert tool.main(['--ann', ann_file, '--image_dir', image_dir]) == 0
    assert '0 errors' in capsys.readouterr().out
    assert tool.main(['--ann', ann_file, '--image_dir', image_dir, '--num_classes', '3']) == 1
    assert 'num_classes=3, categories in the file=2' in capsys.readouterr().out

    cfg = tmp_path / 'cfg.yml'
    cfg.write_text(f'num_classes: 2\n'
                   f'TrainDataset: !COCODataSet\n  dataset_dir: {tmp_path}\n  image_dir: images\n'
                   f'  anno_path: ann.json\n  data_fields: [image, gt_bbox, gt_class, is_crowd]\n'
                   f'EvalDataset: !COCODataSet\n  dataset_dir: {tmp_path}\n  image_dir: images\n'
                   f'  anno_path: missing.json\n')
    assert tool.main(['-c', str(cfg)]) == 1
    out = capsys.readouterr().out
    assert 'TrainDataset:' in out and 'EvalDataset:' in out
    assert out.count('ERROR [ann_file_missing]') == 1


@pytest.mark.parametrize('orientation', [1, 3, 6, 8])
def test_jpeg_size_from_header_equals_ppdets_full_decode(tmp_path, orientation):
    """The fast path (header size + 1/8-scale decode) reports the size cv2's full decode gives ppdet."""
    from PIL import Image

    from ppdet_rtdetr.data.check import _decoded_size
    path = str(tmp_path / 'rotated.jpg')
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(path, exif=exif)
    full = cv2.imread(path, cv2.IMREAD_COLOR)
    assert _decoded_size(path) == ((float(full.shape[1]), float(full.shape[0])), None)
