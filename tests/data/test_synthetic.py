"""The synthetic shapes dataset: deterministic, exact boxes, sparse category ids, COCO-loadable."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from ppdet_rtdetr.data import synthetic

TOOL = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'make_demo_dataset.py')
PARAMS = dict(num_train=10, num_val=5, size=64, seed=0)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    synthetic.make_dataset(root, **PARAMS)
    return root


def _load(root, split):
    with open(os.path.join(root, 'annotations', 'instances_{}.json'.format(split))) as f:
        return json.load(f)


def _extent(mask):
    """[x, y, w, h] from the rows and columns the mask touches (independent of mask_to_box)."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def test_same_seed_gives_byte_identical_annotations(dataset, tmp_path):
    other = str(tmp_path / 'again')
    synthetic.make_dataset(other, **PARAMS)
    for split in ('train', 'val'):
        name = os.path.join('annotations', 'instances_{}.json'.format(split))
        with open(os.path.join(dataset, name), 'rb') as a, open(os.path.join(other, name), 'rb') as b:
            assert a.read() == b.read(), '{} differs between two runs with seed 0'.format(name)
    reseeded = str(tmp_path / 'seed1')
    synthetic.make_dataset(reseeded, **dict(PARAMS, seed=1))
    assert _load(reseeded, 'train')['annotations'] != _load(dataset, 'train')['annotations']


def test_boxes_are_the_drawn_pixels_extent(dataset):
    for split in ('train', 'val'):
        coco = _load(dataset, split)
        for im in coco['images']:
            index = im['id'] - 1
            image, objects = synthetic.render_image(PARAMS['seed'], split, index, PARAMS['size'])
            stored = [a for a in coco['annotations'] if a['image_id'] == im['id']]
            assert [a['category_id'] for a in stored] == [o[0] for o in objects]
            assert (im['height'], im['width']) == image.shape[:2]
            with Image.open(os.path.join(dataset, 'images', split, im['file_name'])) as saved:
                assert saved.size == (im['width'], im['height'])
            union = np.zeros(image.shape[:2], dtype=bool)
            for ann, (_, colour, mask) in zip(stored, objects):
                painted = np.all(image == np.array(colour, dtype=np.uint8), axis=-1)
                assert painted[mask].all(), 'mask pixels not all painted in the object colour'
                union |= mask
                x, y, w, h = ann['bbox']
                assert ann['bbox'] == _extent(painted & mask), (split, im['file_name'], ann)
                assert 0 <= x and 0 <= y and x + w <= im['width'] and y + h <= im['height']
                assert ann['area'] == int(mask.sum()) and 0 < ann['area'] <= w * h
                assert ann['iscrowd'] == 0
                assert min(w, h) >= 0.1 * min(im['width'], im['height']), 'object too small'
            object_colours = {tuple(o[1]) for o in objects}
            background = image[~union]
            for colour in object_colours:
                hits = np.all(background == np.array(colour, dtype=np.uint8), axis=-1).sum()
                assert hits == 0, 'background pixels share an object colour {}'.format(colour)


def test_category_ids_are_sparse_and_named(dataset):
    coco = _load(dataset, 'train')
    assert [(c['id'], c['name']) for c in coco['categories']] == [
        (3, 'circle'), (7, 'square'), (11, 'triangle'), (20, 'cross')]
    used = {a['category_id'] for s in ('train', 'val') for a in _load(dataset, s)['annotations']}
    assert used == {3, 7, 11, 20}


def test_images_are_varied_non_square_some_empty(dataset):
    coco = _load(dataset, 'train')
    counts = [sum(a['image_id'] == im['id'] for a in coco['annotations']) for im in coco['images']]
    assert 0 in counts, 'no empty image'
    assert max(counts) <= 4 and sum(c > 0 for c in counts) >= len(counts) // 2
    sizes = {(im['width'], im['height']) for im in coco['images']}
    assert all(w != h for w, h in sizes) and len(sizes) > 3
    assert coco['info']['params'] == dict(split='train', num_images=10, size=64, seed=0,
                                          format_version=synthetic._FORMAT_VERSION)


def test_pycocotools_and_ppdet_load_it(dataset):
    from pycocotools.coco import COCO
    from ppdet.data.source.coco import COCODataSet

    coco = COCO(os.path.join(dataset, 'annotations', 'instances_val.json'))
    assert coco.getCatIds() == [3, 7, 11, 20]
    assert len(coco.getImgIds()) == PARAMS['num_val']
    ppdet_set = COCODataSet(dataset_dir=dataset, image_dir='images/train',
                            anno_path='annotations/instances_train.json',
                            data_fields=['image', 'gt_bbox', 'gt_class', 'is_crowd'])
    ppdet_set.parse_dataset()
    assert ppdet_set.catid2clsid == {3: 0, 7: 1, 11: 2, 20: 3}
    assert all(r['gt_class'].max() < 4 and len(r['gt_bbox']) > 0 for r in ppdet_set.roidbs)


def test_existing_dataset_is_kept_and_changed_params_regenerate(dataset, tmp_path):
    root = str(tmp_path / 'keep')
    first = synthetic.make_dataset(root, **PARAMS)
    anno = first['train']['anno_path']
    stamp = os.stat(anno).st_mtime_ns
    again = synthetic.make_dataset(root, **PARAMS)
    assert not again['train']['generated'] and not again['val']['generated']
    assert os.stat(anno).st_mtime_ns == stamp, 'an up-to-date annotation file was rewritten'
    smaller = synthetic.make_dataset(root, **dict(PARAMS, num_train=6))
    assert smaller['train']['generated'] and not smaller['val']['generated']
    assert sorted(os.listdir(first['train']['image_dir'])) == ['{:06d}.jpg'.format(i)
                                                                for i in range(6)]


def test_make_demo_dataset_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('make_demo_dataset', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(['--out', str(tmp_path), '--num_train', '4', '--num_val', '2', '--size', '48'])
    assert len(_load(str(tmp_path), 'train')['images']) == 4
    assert 'num_classes: 4' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.parse_args(['--out', str(tmp_path), '--size', '16'])


def test_polygons_kind_other_classes_random_colours_default_untouched(dataset, tmp_path):
    root = str(tmp_path / 'polygons')
    synthetic.make_dataset(root, **dict(PARAMS, num_train=24))
    shapes = synthetic.render_image(0, 'train', 1, 64)
    synthetic.make_dataset(root, **dict(PARAMS, num_train=24), kind='polygons')
    coco = _load(root, 'train')
    assert [c['name'] for c in coco['categories']] == ['pentagon', 'star', 'diamond', 'bar']
    assert coco['info']['params']['kind'] == 'polygons'
    assert {a['category_id'] for a in coco['annotations']} <= {1, 2, 5, 6}
    # boxes are still the drawn extent, and a class comes in many hues (the shapes' hues are 30 degrees wide)
    hues = {}
    for im in coco['images'][:24]:
        image, objects = synthetic.render_image(0, 'train', im['id'] - 1, 64, kind='polygons')
        annos = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        assert [a['bbox'] for a in annos] == [_extent(m) for _, _, m in objects]
        for cid, colour, _ in objects:
            r, g, b = (np.array(colour) / 255.).tolist()
            hues.setdefault(cid, []).append(np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360)
    assert max(np.ptp(h) for h in hues.values()) > 90, hues
    # the default kind draws exactly what it drew before the option existed
    again = synthetic.render_image(0, 'train', 1, 64)
    assert (again[0] == shapes[0]).all() and _load(str(dataset), 'train')['info']['params'].get('kind') is None
    with pytest.raises(ValueError, match="unknown kind 'circles', expected one of \\['shapes', 'polygons'\\]"):
        synthetic.render_image(0, 'train', 1, 64, kind='circles')


def test_instances_overlap_with_exact_visible_masks(tmp_path):
    """instances=True: each segmentation is exactly the pixels painted in its object's colour (what is visible of
    it), boxes are their extent, objects overlap, and ppdet reads the masks back through Poly2Mask."""
    import pycocotools.mask as mask_util
    from ppdet.data.source.coco import COCODataSet
    from ppdet.data.transform.operators import Poly2Mask

    root = str(tmp_path / 'instances')
    synthetic.make_dataset(root, num_train=24, num_val=2, size=96, seed=0, instances=True)
    coco = _load(root, 'train')
    assert coco['info']['params']['instances'] is True
    overlapping_boxes = 0
    for im in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        image, objects = synthetic.render_image(0, 'train', im['id'] - 1, 96, instances=True)
        assert len(objects) == len(anns)
        union = np.zeros(image.shape[:2], dtype=int)
        for ann, (category_id, colour, _) in zip(anns, objects):
            mask = mask_util.decode(ann['segmentation']).astype(bool)
            assert ann['segmentation']['size'] == [im['height'], im['width']]
            assert ann['category_id'] == category_id and ann['area'] == int(mask.sum())
            assert (image[mask] == colour).all(), 'a mask pixel is not its object\'s colour'
            assert ann['bbox'] == _extent(mask)
            union += mask
        assert union.max() <= 1, 'instance masks overlap'
        boxes = [a['bbox'] for a in anns]
        overlapping_boxes += sum(
            min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])
            for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert overlapping_boxes > 0, 'no two objects overlap: the instances kind must have occlusions'

    ppdet_set = COCODataSet(dataset_dir=root, image_dir='images/train', anno_path='annotations/instances_train.json',
                            data_fields=['image', 'gt_bbox', 'gt_class', 'gt_poly', 'is_crowd'])
    ppdet_set.parse_dataset()
    record = next(r for r in ppdet_set.roidbs if len(r['gt_poly']) >= 2)
    sample = Poly2Mask()(dict(record, im_shape=[record['h'], record['w']]))
    anns = [a for a in coco['annotations'] if a['image_id'] == int(record['im_id'][0])]
    for got, ann in zip(sample['gt_segm'], anns):
        np.testing.assert_array_equal(got, mask_util.decode(ann['segmentation']))


def test_default_drawing_is_unchanged():
    """The detection demo's images and masks, as they were drawn before `instances` existed (its figures depend on
    them): a digest of the first six training images' pixels and objects."""
    import hashlib
    digest = hashlib.sha256()
    for index in range(6):
        image, objects = synthetic.render_image(0, 'train', index, 64)
        digest.update(image.tobytes())
        for category_id, colour, mask in objects:
            digest.update(bytes([category_id]) + bytes(colour) + mask.tobytes())
    assert digest.hexdigest() == '645d99ae2a220f0487f780450d4f2f2a5b38bbcffd13fd769b4255465d54560a'
