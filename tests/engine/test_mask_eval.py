"""Mask-RT-DETR evaluation through RTDETRTrainer and ppdet's COCO metric (bbox and segm) at eval batch size 2, on
generated instance data whose images have different sizes: each image's masks are cut back to its own size."""
import json
import os
import types

import numpy as np
import paddle
import pycocotools.mask as mask_util
import pytest

from helpers.data_cases import VAL_ANN

from ppdet_rtdetr.engine import RTDETRTrainer
from test_mask_training import mask_config


@pytest.fixture(scope='module')
def instances(tmp_path_factory):
    """Three val images of different sizes (the generator's 4th is empty), overlapping objects with exact masks."""
    from ppdet_rtdetr.data import synthetic
    root = str(tmp_path_factory.mktemp('instances'))
    synthetic.make_dataset(root, num_train=1, num_val=3, size=96, seed=0, instances=True)
    return root


def _evaluate(tmp_path, monkeypatch, data_root, batch_size, forward=None):
    """trainer.evaluate() in tmp_path (ppdet writes bbox.json / mask.json to the working directory); returns the
    COCO metric (its results kept: ppdet resets them after logging)."""
    os.makedirs(tmp_path, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    cfg = mask_config(tmp_path / 'out', data_root, EvalReader={'batch_size': batch_size})
    paddle.seed(0)
    trainer = RTDETRTrainer(cfg, mode='eval')
    if forward is not None:
        monkeypatch.setattr(trainer.model, 'forward', forward)
    monkeypatch.setattr(trainer, '_reset_metrics', lambda: None)
    trainer.evaluate()
    metric, = trainer._metrics
    return trainer, metric


def _ground_truth_forward(data_root, catid2clsid):
    """A model whose detections are the val set's objects: per image its gt boxes and masks, at its original size,
    the masks of a smaller image padded with -1 to the batch's largest (the post-process's contract)."""
    with open(os.path.join(data_root, VAL_ANN)) as f:
        coco = json.load(f)
    by_image = {im['id']: [] for im in coco['images']}
    for ann in coco['annotations']:
        by_image[ann['image_id']].append(ann)

    def forward(inputs):
        ids = [int(i) for i in inputs['im_id'].numpy().ravel()]
        sizes = np.floor(inputs['im_shape'].numpy() / inputs['scale_factor'].numpy() + 0.5).astype(int)
        max_h, max_w = sizes.max(0)
        rows, masks = [], []
        for image_id in ids:
            for ann in by_image[image_id]:
                x, y, w, h = ann['bbox']
                rows.append([catid2clsid[ann['category_id']], 1.0, x, y, x + w, y + h])
                mask = mask_util.decode(ann['segmentation']).astype('int32')
                padded = np.full([max_h, max_w], -1, 'int32')
                padded[:mask.shape[0], :mask.shape[1]] = mask
                masks.append(padded)
        assert len(set(map(tuple, sizes))) > 1 or len(ids) == 1, 'the batch should mix image sizes'
        return {'bbox': paddle.to_tensor(np.array(rows, 'float32')),
                'bbox_num': paddle.to_tensor([len(by_image[i]) for i in ids], dtype='int32'),
                'mask': paddle.to_tensor(np.stack(masks))}
    return forward


def test_ground_truth_predictions_score_segm_and_bbox_ap_1_at_batch_2(tmp_path, monkeypatch, instances):
    with open(os.path.join(instances, VAL_ANN)) as f:
        catid2clsid = {c['id']: i for i, c in enumerate(json.load(f)['categories'])}
    _, metric = _evaluate(tmp_path, monkeypatch, instances, 2, _ground_truth_forward(instances, catid2clsid))
    results = metric.get_results()
    assert results['bbox'][0] == pytest.approx(1.0) and results['mask'][0] == pytest.approx(1.0), \
        'bbox AP {}, segm AP {}'.format(results['bbox'][0], results['mask'][0])
    with open(tmp_path / 'mask.json') as f:
        segm = json.load(f)
    with open(os.path.join(instances, VAL_ANN)) as f:
        sizes = {im['id']: [im['height'], im['width']] for im in json.load(f)['images']}
    assert all(s['segmentation']['size'] == sizes[s['image_id']] for s in segm), 'an RLE at another image size'


def test_the_tiny_model_gives_the_same_segmentations_at_batch_1_and_2(tmp_path, monkeypatch, instances):
    """The real post-process: a batch of 2 differently sized images writes the same RLEs as one image at a time."""
    runs = []
    for batch_size in (1, 2):
        _, metric = _evaluate(tmp_path / str(batch_size), monkeypatch, instances, batch_size)
        runs.append(metric.results['mask'])
    one, two = runs
    assert len(one) == len(two) == 3 * 20  # 3 images, 20 top queries each
    with open(os.path.join(instances, VAL_ANN)) as f:
        sizes = {im['id']: [im['height'], im['width']] for im in json.load(f)['images']}
    for a, b in zip(one, two):
        assert (a['image_id'], a['category_id']) == (b['image_id'], b['category_id'])
        assert a['segmentation'] == b['segmentation'], 'image {}: RLE differs at batch 2'.format(a['image_id'])
        assert a['segmentation']['size'] == sizes[a['image_id']]
        assert a['score'] == pytest.approx(b['score'], abs=1e-5)


class _Metric(object):
    def __init__(self, results):
        self.results = results

    def get_results(self):
        return self.results


def _checkpointer(tmp_path, **cfg):
    from ppdet.core.workspace import AttrDict
    from ppdet_rtdetr.engine.checkpointer import AtomicCheckpointer
    trainer = types.SimpleNamespace(cfg=AttrDict(save_dir=str(tmp_path), filename='m', **cfg), model=None, _metrics=[])
    return trainer, AtomicCheckpointer(trainer)


@pytest.mark.parametrize('target, second_is_best, best_ap', [('bbox', False, 0.5), ('mask', True, 0.3)])
def test_best_model_follows_target_metrics(tmp_path, target, second_is_best, best_ap):
    """The second evaluation has a better segm AP and a worse bbox AP than the first."""
    trainer, checkpointer = _checkpointer(tmp_path, target_metrics=target)
    status = {'mode': 'eval', 'save_best_model': True, 'epoch_id': 0}
    chosen = []
    for bbox_ap, segm_ap in ((0.5, 0.2), (0.4, 0.3)):
        trainer._metrics = [_Metric({'bbox': [bbox_ap], 'mask': [segm_ap]})]
        chosen.append(checkpointer._save_name(status) == 'best_model')
    assert chosen == [True, second_is_best] and checkpointer.best_ap == best_ap


def test_target_metrics_must_be_bbox_or_mask(tmp_path):
    with pytest.raises(ValueError) as error:
        _checkpointer(tmp_path, target_metrics='segm')
    assert str(error.value) == ("target_metrics: 'segm' is not one of ('bbox', 'mask') (the AP that chooses "
                                "best_model)")


def test_infer_draws_the_masks_and_saves_them_as_coco_rle(tmp_path, monkeypatch, instances):
    """tools/infer.py's path (trainer.predict) with a model that predicts image 000000.jpg's objects: the mask pixels
    get the mask colours drawn over them, pixels outside every box stay, and --save_results writes the masks as RLE."""
    from PIL import Image
    with open(os.path.join(instances, VAL_ANN)) as f:
        coco = json.load(f)
    catid2clsid = {c['id']: i for i, c in enumerate(coco['categories'])}
    image_id = next(im['id'] for im in coco['images'] if im['file_name'] == '000000.jpg')
    anns = [a for a in coco['annotations'] if a['image_id'] == image_id]
    gt_forward = _ground_truth_forward(instances, catid2clsid)
    monkeypatch.chdir(tmp_path)
    trainer = RTDETRTrainer(mask_config(tmp_path / 'out', instances), mode='test')
    # the test reader numbers its images from 0: answer with the gt of the COCO id
    monkeypatch.setattr(trainer.model, 'forward', lambda inputs: gt_forward(
        dict(inputs, im_id=paddle.to_tensor([[image_id]]))))
    path = os.path.join(instances, 'images', 'val', '000000.jpg')
    trainer.predict([path], draw_threshold=0.5, output_dir=str(tmp_path / 'pics'), save_results=True)

    with open(tmp_path / 'pics' / 'mask.json') as f:
        saved = json.load(f)
    assert [mask_util.decode(s['segmentation']).tolist() for s in saved] == \
        [mask_util.decode(a['segmentation']).tolist() for a in anns]
    original = np.asarray(Image.open(path).convert('RGB'), 'float32')
    drawn = np.asarray(Image.open(tmp_path / 'pics' / '000000.jpg').convert('RGB'), 'float32')
    masks = np.stack([mask_util.decode(a['segmentation']) for a in anns]).astype(bool)
    boxes = np.zeros(masks.shape[1:], bool)
    for a in anns:
        x, y, w, h = (int(v) for v in a['bbox'])
        boxes[max(y - 12, 0):y + h + 3, max(x - 3, 0):x + w + 3] = True  # the box, its outline and its label
    change = np.abs(drawn - original).mean(-1)
    assert change[masks.any(0)].mean() > 40, 'masks not drawn: mean change {:.1f}'.format(change[masks.any(0)].mean())
    # outside: only JPEG re-encoding noise (and the edge of a label text wider than its box)
    assert np.median(change[~boxes]) <= 2 and change[~boxes].mean() < change[masks.any(0)].mean() / 8, \
        'pixels outside the boxes changed by {:.1f} on average'.format(change[~boxes].mean())
