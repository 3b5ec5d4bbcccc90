"""RTDETRCOCODataSet in training: every defect check_coco finds is skipped or repaired with its warning
logged, or stops the run before anything is written; any category-id scheme comes back in the predictions.

The check's own rules are tested in tests/data/test_check_dataset.py; here the dataset class and the
Trainer are under test, on copies of the synthetic shapes data (train images 1-3 with 1, 3 and 3 boxes;
image 4 has none and is skipped without allow_empty).
"""
import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pytest

from conftest import ROOT, TINY_CFG, fresh_config
from helpers.data_cases import (TRAIN_ANN, LogRecords, checkpoint_files, light_config, make_shapes, read_json,
                        write_json)

from ppdet_rtdetr.data.check_report import _MESSAGES, DatasetError

SHAPES_IDS = {0: 3, 1: 7, 2: 11, 3: 20}  # class index -> category id in the shapes data


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('shapes'))


@pytest.fixture
def data(shapes, tmp_path):
    """A private copy of the shapes data, and its train annotation dict to edit (saved by `_save`)."""
    root = str(tmp_path / 'data')
    shutil.copytree(shapes, root)
    return root, read_json(os.path.join(root, TRAIN_ANN))


def _save(root, ann):
    write_json(os.path.join(root, TRAIN_ANN), ann)


def _parse(tmp_path, root, **dataset_attrs):
    """The config's TrainDataset after parse_dataset (as the train reader calls it), and its log."""
    from ppdet.core.workspace import create
    light_config(tmp_path / 'out', root, train=dataset_attrs)
    dataset = create('TrainDataset')
    with LogRecords('ppdet_rtdetr.data.coco') as log:
        dataset.check_or_download_dataset()
        dataset.parse_dataset()
    return dataset, log.messages


def _issue_text(severity, code, example):
    return '{} [{}] x1: {}\n    {}'.format(severity, code, _MESSAGES[code][1], example)


def _boxes(dataset, image_id):
    return next(r['gt_bbox'] for r in dataset.roidbs if int(r['im_id'][0]) == image_id)


def _remove_image(root, ann):
    os.remove(os.path.join(root, 'images', 'train', '000001.jpg'))


def _corrupt_image(root, ann):
    with open(os.path.join(root, 'images', 'train', '000001.jpg'), 'wb') as f:
        f.write(b'not a jpeg')


def _set(path, value):
    """An edit of the annotation dict: path = ('annotations', 1, 'bbox') sets ann['annotations'][1]['bbox']."""
    def edit(root, ann):
        target = ann
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _delete_file_name(root, ann):
    del ann['images'][1]['file_name']


def _copy_annotation(root, ann):
    ann['annotations'].append(dict(ann['annotations'][1]))


# code, edit, dataset options, the logged example, image ids left, boxes left in image 2
WARNINGS = [
    ('missing_image', _remove_image, {}, "image_id=2 file_name='000001.jpg' value=no file {images}/000001.jpg",
     [1, 3], None),
    ('corrupt_image', _corrupt_image, {}, "image_id=2 file_name='000001.jpg' value=cv2 cannot decode it",
     [1, 3], None),
    ('size_mismatch', _set(('images', 0, 'width'), 88), {},
     "image_id=1 file_name='000000.jpg' value=stored 88x88, file 104x88", [1, 2, 3], 3),
    ('bad_image_entry', _delete_file_name, {}, "value={'id': 2, 'height': 94, 'width': 96}", [1, 3], None),
    ('malformed_annotation', _set(('annotations', 0, 'bbox'), [42, 8, 36]), {},
     "image_id=1 ann_id=1 file_name='000000.jpg' value=[42, 8, 36]", [2, 3], 3),
    ('unknown_image_id', _set(('annotations', 0, 'image_id'), 99), {}, 'image_id=99 ann_id=1', [2, 3], 3),
    ('unknown_category_id', _set(('annotations', 0, 'category_id'), 5), {},
     "image_id=1 ann_id=1 file_name='000000.jpg' value=5", [2, 3], 3),
    ('non_finite_box', _set(('annotations', 1, 'bbox'), [58, math.nan, 30, 30]), {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=bbox=[58, nan, 30, 30] area=500", [1, 2, 3], 2),
    ('degenerate_box', _set(('annotations', 1, 'bbox'), [58, 60, 0, 30]), {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=[58, 60, 0, 30]", [1, 2, 3], 2),
    ('box_clipped', _set(('annotations', 1, 'bbox'), [58, 60, 50, 30]), {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=[58, 60, 50, 30] in a 96x94 image -> "
     "[58.0, 60.0, 38.0, 30.0]", [1, 2, 3], 3),
    ('box_outside_image', _set(('annotations', 1, 'bbox'), [58, 60, 50, 30]), {'clip_boxes': False},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=[58, 60, 50, 30] in a 96x94 image", [1, 2, 3], 2),
    ('box_empty_after_clip', _set(('annotations', 1, 'bbox'), [200, 60, 10, 10]), {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=[200, 60, 10, 10] in a 96x94 image", [1, 2, 3], 2),
    ('bad_area', _set(('annotations', 1, 'area'), 0), {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=0", [1, 2, 3], 3),
    ('duplicate_annotation_id', _copy_annotation, {},
     "image_id=2 ann_id=2 file_name='000001.jpg' value=exact copy", [1, 2, 3], 3),
    ('duplicate_category_name', _set(('categories', 3, 'name'), 'circle'), {}, 'value=circle', [1, 2, 3], 3),
]


@pytest.mark.parametrize('code, edit, options, example, image_ids, boxes_in_2', WARNINGS,
                         ids=[w[0] for w in WARNINGS])
def test_bad_entries_are_skipped_with_the_warning_logged(tmp_path, data, code, edit, options, example,
                                                         image_ids, boxes_in_2):
    root, ann = data
    edit(root, ann)
    _save(root, ann)
    dataset, log = _parse(tmp_path, root, **options)

    warnings = [message for level, message in log if level == 'WARNING']
    assert len(warnings) == 1, log
    example = example.replace('{images}', os.path.join(root, 'images', 'train'))
    assert _issue_text('WARNING', code, example) in warnings[0]
    assert [int(r['im_id'][0]) for r in dataset.roidbs] == image_ids
    if boxes_in_2 is not None:
        boxes = _boxes(dataset, 2)
        assert boxes.shape == (boxes_in_2, 4) and np.isfinite(boxes).all()


def test_clipped_box_reaches_the_records_clipped(tmp_path, data):
    root, ann = data
    _set(('annotations', 1, 'bbox'), [58, 60, 50, 30])(root, ann)
    _save(root, ann)
    dataset, _ = _parse(tmp_path, root)
    # xyxy, clipped to the 96x94 image
    np.testing.assert_allclose(_boxes(dataset, 2)[0], [58, 60, 96, 90])


def _no_json(root, ann):
    with open(os.path.join(root, TRAIN_ANN), 'w') as f:
        f.write('{"images": [')


def _json_error(text):
    try:
        json.loads(text)
    except ValueError as error:
        return str(error)


# code, edit (None: keep the file), dataset options, top-level overrides, the example in the error
ERRORS = [
    ('ann_file_not_json', _no_json, {}, {}, "file_name='{ann}' value=" + _json_error('{"images": [')),
    ('missing_key', lambda root, ann: ann.pop('categories'), {}, {}, "file_name='{ann}' value=categories"),
    ('bad_category', _set(('categories', 0), {'name': 'circle'}), {}, {}, "value={'name': 'circle'}"),
    ('duplicate_category_id', _set(('categories', 3, 'id'), 11), {}, {}, 'value=11'),
    ('num_classes_mismatch', None, {}, {'num_classes': 80},
     "file_name='{ann}' value=num_classes=80, categories in the file=4"),
    ('duplicate_image_id', _set(('images', 1, 'id'), 1), {}, {}, "image_id=1 file_name='000001.jpg'"),
    ('no_images', _set(('images',), []), {}, {}, "file_name='{ann}'"),
    ('no_annotations', _set(('annotations',), []), {'allow_empty': True}, {}, "file_name='{ann}'"),
]


@pytest.mark.parametrize('code, edit, options, overrides, example', ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_stop_training_before_anything_is_written(tmp_path, data, code, edit, options, overrides,
                                                         example):
    from ppdet.engine import Trainer
    root, ann = data
    if edit is not None:
        edit(root, ann)
        if edit is not _no_json:
            _save(root, ann)
    save_dir = tmp_path / 'out'
    cfg = light_config(save_dir, root, train=options, **overrides)
    with pytest.raises(DatasetError) as error:
        Trainer(cfg, mode='train').train()
    assert _issue_text('ERROR', code, example.replace('{ann}', os.path.join(root, TRAIN_ANN))) in str(error.value)
    assert checkpoint_files(save_dir) == []


def test_training_runs_on_the_cleaned_records(tmp_path, data):
    """A NaN box and a missing image are skipped; the epoch trains on the rest and is saved."""
    from ppdet.engine import Trainer
    root, ann = data
    _remove_image(root, ann)
    _set(('annotations', 4, 'bbox'), [36, math.nan, 37, 29])(root, ann)
    _save(root, ann)
    save_dir = tmp_path / 'out'
    cfg = light_config(save_dir, root, epoch=1)
    with LogRecords('ppdet_rtdetr.data.coco') as log:
        trainer = Trainer(cfg, mode='train')
    assert [int(r['im_id'][0]) for r in trainer.dataset.roidbs] == [1, 3]
    assert len(_boxes(trainer.dataset, 3)) == 2
    assert '[missing_image] x1' in log.messages[0][1] and '[non_finite_box] x1' in log.messages[0][1]
    trainer.train()
    assert checkpoint_files(save_dir) == ['rtdetr_tiny/model_final.pdopt', 'rtdetr_tiny/model_final.pdparams']


# file's category ids in file order; classes follow that order
ID_SCHEMES = {'0-based': [0, 1, 2, 3], '1-based': [1, 2, 3, 4], 'sparse, unsorted': [20, 3, 11, 7]}


@pytest.mark.parametrize('ids', ID_SCHEMES.values(), ids=ID_SCHEMES.keys())
def test_any_category_id_scheme_maps_like_ppdet_eval_and_infer(tmp_path, data, ids):
    from ppdet.data.source.category import get_categories
    root, ann = data
    new_id = {cat['id']: i for cat, i in zip(ann['categories'], ids)}
    for cat in ann['categories']:
        cat['id'] = new_id[cat['id']]
    ann['categories'] = [ann['categories'][ids.index(i)] for i in ids]
    for a in ann['annotations']:
        a['category_id'] = new_id[a['category_id']]
    _save(root, ann)
    dataset, _ = _parse(tmp_path, root)

    assert dataset.catid2clsid == {cat_id: clsid for clsid, cat_id in enumerate(ids)}
    # what ppdet's COCOMetric (train --eval) and infer read from the same file
    clsid2catid, _ = get_categories('COCO', os.path.join(root, TRAIN_ANN))
    assert clsid2catid == {clsid: cat_id for clsid, cat_id in enumerate(ids)}
    classes = np.concatenate([r['gt_class'][:, 0] for r in dataset.roidbs])
    file_ids = [a['category_id'] for a in sorted(ann['annotations'], key=lambda a: a['image_id'])]
    assert classes.tolist() == [ids.index(i) for i in file_ids]


def test_eval_writes_predictions_with_the_files_sparse_ids(tmp_path, shapes):
    from ppdet.engine import Trainer
    cfg = light_config(tmp_path / 'out', shapes, save_prediction_only=True, output_eval=str(tmp_path / 'eval'))
    trainer = Trainer(cfg, mode='eval')
    labels = []
    trainer.model.register_forward_post_hook(
        lambda layer, inputs, outputs: labels.extend(int(v) for v in outputs['bbox'][:, 0].numpy()))
    trainer.evaluate()

    assert trainer._metrics[0].clsid2catid == SHAPES_IDS
    predictions = read_json(tmp_path / 'eval' / 'bbox.json')
    assert len(predictions) == len(labels) > 0
    assert Counter(p['category_id'] for p in predictions) == Counter(SHAPES_IDS[i] for i in labels)


def test_the_custom_data_template_loads_checked_data(tmp_path, shapes):
    """configs/datasets/custom_coco_template.yml as docs/custom_data.md uses it: its placeholder num_classes (3)
    against the 4 categories of the data is the mismatch error; with 4 the data loads."""
    from ppdet.core.workspace import create

    from ppdet_rtdetr.cli import apply_overrides
    leaf = tmp_path / 'my_leaf.yml'
    leaf.write_text("_BASE_: ['{}', '{}']\n".format(
        TINY_CFG, os.path.join(ROOT, 'configs', 'datasets', 'custom_coco_template.yml')))
    for num_classes in (3, 4):
        cfg = fresh_config(str(leaf))
        apply_overrides({'num_classes': num_classes, 'TrainDataset': {'dataset_dir': shapes, 'anno_path': TRAIN_ANN}})
        assert type(cfg.TrainDataset).__name__ == 'RTDETRCOCODataSet'
        dataset = create('TrainDataset')
        if num_classes == 3:
            with pytest.raises(DatasetError, match='value=num_classes=3, categories in the file=4'):
                dataset.parse_dataset()
        else:
            dataset.parse_dataset()
            assert len(dataset.roidbs) == 3 and dataset.cname2cid == {'circle': 0, 'square': 1, 'triangle': 2,
                                                                       'cross': 3}
