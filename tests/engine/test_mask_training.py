"""Mask-RT-DETR trains through RTDETRTrainer (configs/tests/mask_rtdetr_tiny.yml) on generated instance data: the
reader gives masks (RLE segmentations through Poly2Mask), every loss term is logged and the loss drops; the
non-finite check names the mask transformer's outputs."""
import math
import os
import re

import numpy as np
import paddle
import pytest

from conftest import ROOT, fresh_config
from helpers.data_cases import TRAIN_ANN, VAL_ANN, LogRecords

from ppdet_rtdetr.data.check_report import Report
from ppdet_rtdetr.engine import RTDETRTrainer, prediction_check
from ppdet_rtdetr.engine.seed import seed_everything

MASK_TINY = os.path.join(ROOT, 'configs', 'tests', 'mask_rtdetr_tiny.yml')
LOSS_NAMES = ['loss_{}{}{}'.format(term, aux, dn) for term in ('class', 'bbox', 'giou', 'mask', 'dice')
              for aux in ('', '_aux') for dn in ('', '_dn')]
LOSS_VALUE = re.compile(r'(loss\w*): (-?[0-9.]+|nan|inf)')


@pytest.fixture(scope='module')
def instances(tmp_path_factory):
    """Two train images (one batch: every step sees the same objects) and two val images, with instance masks."""
    from ppdet_rtdetr.data import synthetic
    root = str(tmp_path_factory.mktemp('instances'))
    synthetic.make_dataset(root, num_train=2, num_val=2, size=96, seed=0, instances=True)
    return root


def mask_config(save_dir, data_root, **overrides):
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.device import resolve_device
    cfg = fresh_config(MASK_TINY, save_dir=str(save_dir), **overrides)
    apply_overrides({
        'TrainDataset': dict(dataset_dir=data_root, image_dir='images/train', anno_path=TRAIN_ANN),
        'EvalDataset': dict(dataset_dir=data_root, image_dir='images/val', anno_path=VAL_ANN),
        'TestDataset': dict(dataset_dir=data_root, anno_path=VAL_ANN),
    })
    resolve_device(cfg)
    return cfg


def test_tiny_mask_training_logs_every_loss_term_and_the_loss_drops(tmp_path, instances):
    seed_everything(0)
    cfg = mask_config(tmp_path / 'out', instances, epoch=10, snapshot_epoch=100,
                      LearningRate={'base_lr': 0.002, 'schedulers': [{'name': 'PiecewiseDecay', 'gamma': 1.0,
                                                                      'milestones': [100], 'use_warmup': False}]})
    trainer = RTDETRTrainer(cfg, mode='train')
    batch = next(iter(trainer.loader))
    assert [m.shape[1:] for m in batch['gt_segm']] == [[64, 96]] * 2, 'gt_segm must be resized with the image'
    assert set(np.unique(np.concatenate([m.numpy().ravel() for m in batch['gt_segm']]))) == {0, 1}
    with LogRecords('ppdet.engine') as logs:
        trainer.train()
    steps = [dict(LOSS_VALUE.findall(text)) for _, text in logs.messages if text.startswith('Epoch:')]
    # one step per epoch (2 images, batch 2); ppdet logs from the second step on (its first has no timing yet)
    assert len(steps) == 9, 'expected steps 2..10 logged, got {}'.format(len(steps))
    assert sorted(steps[0]) == sorted(LOSS_NAMES + ['loss']), 'logged loss terms: {}'.format(sorted(steps[0]))
    losses = [float(s['loss']) for s in steps]
    assert all(math.isfinite(v) for v in losses), losses
    # the mean of the last 3 steps against the first logged: the same batch every step, so the drop is the fit's
    assert np.mean(losses[-3:]) < 0.85 * losses[0], 'loss did not drop: {}'.format(losses)
    for term in ('loss_mask', 'loss_dice'):
        assert float(steps[-1][term]) < float(steps[0][term]), '{} did not drop: {} -> {}'.format(
            term, steps[0][term], steps[-1][term])


def test_segmentations_become_gt_poly_and_a_missing_one_is_named(tmp_path):
    report = Report(ann_file='a.json', image_dir='img')
    report.images = [{'id': 5, 'file_name': 'x.jpg', 'height': 10, 'width': 12}]
    rle = {'size': [10, 12], 'counts': '0d`0'}
    report.annotations = [{'id': 1, 'image_id': 5, 'category_id': 3, 'bbox': [0, 0, 4, 4], 'segmentation': rle},
                          {'id': 2, 'image_id': 5, 'category_id': 3, 'bbox': [1, 1, 4, 4], 'iscrowd': 1,
                           'segmentation': rle},
                          {'id': 3, 'image_id': 5, 'category_id': 3, 'bbox': [2, 2, 4, 4],
                           'segmentation': [[2, 2, 6, 2, 6, 6]]}]
    report.catid2clsid = {3: 0}
    record, = report.to_records(load_crowd=True, load_segm=True)
    assert record['gt_poly'] == [rle, [[0.0] * 8], [[2, 2, 6, 2, 6, 6]]]
    assert 'gt_poly' not in report.to_records()[0]
    report.annotations[2]['segmentation'] = []
    with pytest.raises(ValueError) as error:
        report.to_records(load_segm=True)
    assert str(error.value) == ("a.json: annotation id=3 of image id=5 ('x.jpg') has no segmentation; a mask "
                                "model needs one per object")


def _mask_outputs(dn_meta):
    """A mask-transformer training output (2 decoder layers, b 1, 2 denoising + 3 matching queries, k 2, 4x4 masks),
    every value finite."""
    def t(*shape):
        return paddle.zeros(shape)
    enc = (t(1, 3, 2), t(1, 3, 4), t(1, 3, 4, 4))
    init = (t(1, 5, 2), t(1, 5, 4), t(1, 5, 4, 4))
    return [t(2, 1, 5, 2), t(2, 1, 5, 4), t(2, 1, 5, 4, 4), enc, init, dn_meta]


def test_nonfinite_check_names_the_mask_transformer_outputs():
    outputs = _mask_outputs({'dn_num_split': [2, 3]})
    assert prediction_check.all_finite(tuple(outputs)) and prediction_check.report(tuple(outputs)) == ''
    outputs[2][1, 0, 4, 0, 0] = math.nan  # last decoder layer, last matching query's mask
    outputs[3][2][0, 0, 1, 1] = math.inf  # an encoder top-k mask
    outputs[4][1][0, 1, 0] = math.nan  # the second denoising initial box
    outputs = tuple(outputs)
    assert not prediction_check.all_finite(outputs)
    assert prediction_check.report(outputs) == (
        'dec_out_masks of decoder layer 2 of 2: 1 of 48 values NaN, 0 inf; enc_topk_masks: 0 of 48 values NaN, '
        '1 inf; dn_out_bboxes of the initial queries: 1 of 8 values NaN, 0 inf')
    copy = prediction_check.finite_copy(outputs)
    assert prediction_check.all_finite(copy) and isinstance(copy[3], tuple) and copy[5] is outputs[5]
    assert float(paddle.abs(copy[2]).sum()) == 0.


def test_nonfinite_check_of_the_mask_layout_without_denoising():
    outputs = _mask_outputs(None)
    outputs[4] = None  # no initial-query outputs either
    outputs[0][0, 0, 1, 1] = math.nan
    assert prediction_check.report(tuple(outputs)) == (
        'dec_out_logits of decoder layer 1 of 2: 1 of 10 values NaN, 0 inf')
