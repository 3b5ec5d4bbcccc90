"""The demo's box count: one box per object, duplicates, false detections and misses told apart."""
import importlib.util
import json
import os

from conftest import ROOT

_spec = importlib.util.spec_from_file_location('demo_boxes', os.path.join(ROOT, 'scripts', 'demo_boxes.py'))
demo_boxes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_boxes)

GT = {'images': [{'id': 1}, {'id': 2}, {'id': 5}],
      'annotations': [
          {'image_id': 1, 'category_id': 3, 'bbox': [10, 10, 20, 20]},
          {'image_id': 1, 'category_id': 7, 'bbox': [50, 50, 10, 10]},
          {'image_id': 2, 'category_id': 3, 'bbox': [0, 0, 40, 40]},
          {'image_id': 2, 'category_id': 3, 'bbox': [100, 100, 8, 8], 'iscrowd': 1}]}


def _pred(image_id, category_id, bbox, score):
    return {'image_id': image_id, 'category_id': category_id, 'bbox': bbox, 'score': score}


def test_one_box_per_object_is_clean():
    preds = [_pred(1, 3, [11, 10, 20, 20], .9), _pred(1, 7, [50, 51, 10, 10], .8),
             _pred(2, 3, [1, 1, 40, 40], .7), _pred(1, 3, [11, 11, 20, 20], .3)]  # below the threshold
    result = demo_boxes.count_boxes(GT, preds, .5)
    assert result == {'objects': 3, 'boxes': 3, 'matched': 3, 'duplicates': 0, 'false': 0, 'missed': 0,
                      'images': {}}


def test_duplicates_false_boxes_and_misses_are_counted_per_image():
    preds = [_pred(1, 3, [10, 10, 20, 20], .9),
             _pred(1, 3, [12, 10, 20, 20], .85),  # IoU 0.82 with the matched circle: duplicate
             _pred(1, 3, [50, 50, 10, 10], .8),  # on the square's place, but called a circle: false
             _pred(5, 7, [0, 0, 5, 5], .6)]  # image without objects: false
    result = demo_boxes.count_boxes(GT, preds, .5)
    assert {k: result[k] for k in ('objects', 'boxes', 'matched', 'duplicates', 'false', 'missed')} == \
        {'objects': 3, 'boxes': 4, 'matched': 1, 'duplicates': 1, 'false': 2, 'missed': 2}
    assert result['images'] == {
        1: {'objects': 2, 'boxes': 3, 'matched': 1, 'duplicates': 1, 'false': 1, 'missed': 1},
        2: {'objects': 1, 'boxes': 0, 'matched': 0, 'duplicates': 0, 'false': 0, 'missed': 1},
        5: {'objects': 0, 'boxes': 1, 'matched': 0, 'duplicates': 0, 'false': 1, 'missed': 0}}


def test_the_higher_score_takes_the_object():
    # two boxes on one object: the lower-scored one is the duplicate even if it fits better
    preds = [_pred(2, 3, [5, 5, 40, 40], .6), _pred(2, 3, [0, 0, 40, 40], .55)]
    result = demo_boxes.count_boxes(GT, preds, .5)
    assert (result['matched'], result['duplicates']) == (1, 1)


def test_images_in_counts_only_the_drawn_pictures(tmp_path, capsys):
    gt = {'images': [dict(im, file_name=f'images/val/{im["id"]:06d}.jpg') for im in GT['images']],
          'annotations': GT['annotations']}
    preds = [_pred(1, 3, [10, 10, 20, 20], .9), _pred(1, 7, [50, 50, 10, 10], .9),
             _pred(2, 3, [0, 0, 40, 40], .9), _pred(2, 3, [1, 0, 40, 40], .8)]  # a duplicate in image 2
    (tmp_path / 'anno.json').write_text(json.dumps(gt))
    (tmp_path / 'bbox.json').write_text(json.dumps(preds))
    drawn = tmp_path / 'drawn'
    drawn.mkdir()
    (drawn / '000001.jpg').write_bytes(b'')
    args = ['--anno', str(tmp_path / 'anno.json'), '--pred', str(tmp_path / 'bbox.json')]
    assert demo_boxes.main(args + ['--images_in', str(drawn)]) == 0
    assert capsys.readouterr().out.strip() == ('boxes scored >= 0.5: 2 for 2 objects in 1 images: 2 on an object, '
                                               '0 duplicates, 0 false, 0 objects missed')
    assert demo_boxes.main(args) == 1
    assert '1 duplicates' in capsys.readouterr().out
