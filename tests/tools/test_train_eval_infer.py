"""The training workflow of the tools on the tiny config: train with --eval, resume, infer, and overfit.

One module-scoped run of ``tools/train.py --eval`` (2 epochs of 2 iterations on a synthetic dataset, from a
scratch working directory, not the repo) is shared by the eval, resume and infer tests. The overfitting
test runs in-process on one fixed batch.
"""
import glob
import importlib.util
import json
import os
import re
import shutil
import types

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import ROOT, fresh_config
from helpers.bad_images import write_bad_images
from helpers.workflow_helpers import CATEGORY_IDS, TINY_CFG, Job, dataset_overrides, make_shapes, run, tool_command

# ppdet's training log line, e.g. "Epoch: [1] [0/2] learning_rate: 0.000256 loss_class: ..."
EPOCH_LINE = re.compile(r'Epoch: \[(\d+)\] \[\s*(\d+)/(\d+)\] learning_rate: ([0-9.e+-]+)')
# pycocotools' summary line of the COCO metric
AP_LINE = re.compile(r'Average Precision {2}\(AP\) @\[ IoU=0\.50:0\.95 \| area= {3}all \| maxDets=100 \] = (-?[0-9.]+)')
BEST_AP_LINE = re.compile(r'Best test bbox ap is ([0-9]+\.[0-9]+)')
NUM_TRAIN, NUM_VAL = 6, 4  # image 3 is empty and skipped in training: 5 images, batch 2, drop_last: 2 steps


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """The synthetic dataset's root."""
    return make_shapes(str(tmp_path_factory.mktemp('shapes')), NUM_TRAIN, NUM_VAL)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, shapes):
    """`tools/train.py --eval` for the tiny config's 2 epochs, run in a scratch working directory (seeded: the
    infer tests read what this model draws)."""
    base = tmp_path_factory.mktemp('workflow')
    cwd = base / 'cwd'
    cwd.mkdir()
    log = run(tool_command('train', ['-c', TINY_CFG, '--eval', '--seed', '0', '-o', 'save_dir=out']
                           + dataset_overrides(shapes)),
              str(cwd), str(base / 'train.log'))
    return types.SimpleNamespace(base=base, data=shapes, cwd=str(cwd), log=log,
                                 ckpt_dir=os.path.join(str(cwd), 'out', 'rtdetr_tiny'))


def _epoch_lines(log):
    """[(epoch, step, steps per epoch, learning rate as logged)] of a training log, in order."""
    return [(int(e), int(s), int(n), lr) for e, s, n, lr in EPOCH_LINE.findall(log)]


def test_train_runs_the_configured_epochs_from_another_directory(trained):
    lines = _epoch_lines(trained.log)
    assert [(e, s) for e, s, _, _ in lines] == [(0, 0), (0, 1), (1, 0), (1, 1)], \
        'expected 2 epochs of 2 steps, the log has {}'.format(lines)
    for name in ('0', 'model_final'):
        for suffix in ('.pdparams', '.pdopt'):
            path = os.path.join(trained.ckpt_dir, name + suffix)
            assert os.path.isfile(path), 'save_dir=out is relative to the working directory: {} missing'.format(path)


def test_eval_logs_the_coco_bbox_ap_every_epoch(trained):
    aps = [float(ap) for ap in AP_LINE.findall(trained.log)]
    assert len(aps) == 2, '--eval with snapshot_epoch 1 must print one COCO AP per epoch, found {}'.format(aps)
    assert all(0. <= ap <= 1. for ap in aps), 'COCO AP outside [0, 1] (-1 means no ground truth): {}'.format(aps)
    best = BEST_AP_LINE.findall(trained.log)
    assert len(best) == 2 and abs(float(best[-1]) - max(aps)) < 5e-4, \
        'best AP {} does not match the per-epoch APs {}'.format(best, aps)
    # ppdet's COCO metric writes its predictions to the working directory before scoring them
    with open(os.path.join(trained.cwd, 'bbox.json')) as f:
        detections = json.load(f)
    with open(os.path.join(trained.data, 'annotations', 'instances_val.json')) as f:
        val_ids = {image['id'] for image in json.load(f)['images']}
    assert detections, 'eval wrote an empty bbox.json'
    assert {d['image_id'] for d in detections} <= val_ids
    categories = {d['category_id'] for d in detections}
    assert categories <= CATEGORY_IDS, 'eval must report the dataset category ids, got {}'.format(categories)


@pytest.fixture(scope='module')
def followups(trained):
    """From the trained run's checkpoints, at the same time (each tool is one thread, the machine has two):

    - `tools/train.py -r out/rtdetr_tiny/0`: the second epoch again, saving to out_resumed;
    - `tools/infer.py --infer_dir <val images + bad files> --save_results` with the final weights, into
      infer_out (the bad files: tests/helpers/bad_images.py, to be skipped).
    """
    overrides = dataset_overrides(trained.data)
    infer_in = trained.base / 'infer_in'
    shutil.copytree(os.path.join(trained.data, 'images', 'val'), str(infer_in))
    bad_images = write_bad_images(str(infer_in))
    resume = Job(tool_command('train', ['-c', TINY_CFG, '-r', 'out/rtdetr_tiny/0', '-o', 'save_dir=out_resumed']
                              + overrides), trained.cwd, str(trained.base / 'resume.log'))
    infer_out = os.path.join(trained.cwd, 'infer_out')
    # threshold 0 draws every one of the 20 kept detections: a 2-epoch model's scores are low
    infer = Job(tool_command('infer', ['-c', TINY_CFG, '--infer_dir', str(infer_in),
                                       '--output_dir', infer_out, '--save_results', '--draw_threshold', '0.0',
                                       '-o', 'weights=out/rtdetr_tiny/model_final'] + overrides),
                trained.cwd, str(trained.base / 'infer.log'))
    try:
        resume_log = resume.wait()
    finally:
        infer_log = infer.wait()
    return types.SimpleNamespace(
        resume_log=resume_log, resume_dir=os.path.join(trained.cwd, 'out_resumed', 'rtdetr_tiny'),
        infer_out=infer_out, infer_inputs=sorted(glob.glob(os.path.join(trained.data, 'images', 'val', '*.jpg'))),
        infer_in=str(infer_in), infer_log=infer_log, bad_images=bad_images)


def test_resume_continues_at_epoch_1_with_the_learning_rate_schedule(trained, followups):
    assert 'Finish resuming model weights' in followups.resume_log and '0.pdparams' in followups.resume_log
    lines = _epoch_lines(followups.resume_log)
    assert {e for e, _, _, _ in lines} == {1}, 'resuming from checkpoint 0 must train epoch 1 only: {}'.format(lines)
    first_run = {(e, s): lr for e, s, _, lr in _epoch_lines(trained.log)}
    # the scheduler's step counter lives in .pdopt: without it the warm-up would start over at step 0
    assert lines[0][3] == first_run[(1, 0)] != first_run[(0, 0)], \
        'resumed lr {} should continue the first run ({} at epoch 1), not restart ({})'.format(
            lines[0][3], first_run[(1, 0)], first_run[(0, 0)])


def test_resume_loads_the_optimizer_state(trained, followups):
    """Adam's bias-correction accumulators (beta^t) count every step since the start, whatever the gradients:
    the resumed run ends with the same counts as the uninterrupted one only if it started from 0.pdopt's."""
    epoch0 = paddle.load(os.path.join(trained.ckpt_dir, '0.pdopt'))
    final = paddle.load(os.path.join(trained.ckpt_dir, 'model_final.pdopt'))
    final_resumed = paddle.load(os.path.join(followups.resume_dir, 'model_final.pdopt'))
    steps = [state['LR_Scheduler']['last_epoch'] for state in (epoch0, final, final_resumed)]
    assert steps == [2, 4, 4], 'scheduler steps (epoch 0, final, resumed final) = {}'.format(steps)
    pow_keys = [k for k in final if k.endswith(('beta1_pow_acc_0', 'beta2_pow_acc_0'))]
    assert pow_keys and set(pow_keys) <= set(final_resumed), 'accumulators missing from the resumed .pdopt'
    for key in pow_keys:
        start, end, end_resumed = (float(np.asarray(s[key]).reshape(-1)[0]) for s in (epoch0, final, final_resumed))
        assert end < start, '{} did not advance: {} -> {}'.format(key, start, end)
        np.testing.assert_allclose(end_resumed, end, rtol=1e-6, err_msg='{}: resumed run did not continue from '
                                   'the saved accumulator {}'.format(key, start))


def test_infer_draws_the_boxes_on_every_image(followups):
    assert len(followups.infer_inputs) == NUM_VAL
    for path in followups.infer_inputs:
        drawn_path = os.path.join(followups.infer_out, os.path.basename(path))
        assert os.path.isfile(drawn_path), 'no drawn image for {}'.format(path)
        source = np.asarray(Image.open(path).convert('RGB'), dtype=np.int16)
        drawn = np.asarray(Image.open(drawn_path).convert('RGB'), dtype=np.int16)
        assert drawn.shape == source.shape, 'drawn image {} is not at the input size {}'.format(drawn.shape,
                                                                                                 source.shape)
        # JPEG re-encoding moves pixels by a few levels (none by over 16 on these images); drawn box edges and
        # labels replace them, in colours ppdet picks at random from its colour map, some near the images'
        # grey (a khaki-and-grey drawing changed 0.75% of the pixels by over 96 levels, 35% by over 32)
        changed = (np.abs(drawn - source).max(-1) > 32).mean()
        assert changed > 0.02, '{}: only {:.2%} of the pixels changed, no boxes drawn'.format(drawn_path, changed)


def test_infer_skips_the_bad_files_of_a_folder_naming_each(followups):
    """The PNG bomb, the JPEG declaring 65000x65000, truncated / empty / text files among the val images: one
    warning each with the reason, a count in the summary, and no drawing of them (the others: tests above)."""
    for name, reason in followups.bad_images.items():
        assert 'skipped {}: {}'.format(os.path.join(followups.infer_in, name), reason) in followups.infer_log, name
    assert 'Found {} images in {}, 6 skipped'.format(NUM_VAL, followups.infer_in) in followups.infer_log
    assert 'Inferred {} images, 6 skipped (unreadable or too large: bomb.png, cut.png, empty.jpg, huge.jpg, ' \
        'notes.jpg, truncated.jpg)'.format(NUM_VAL) in followups.infer_log
    assert not set(os.listdir(followups.infer_out)) & set(followups.bad_images)


def _infer_tool():
    spec = importlib.util.spec_from_file_location('infer_tool', os.path.join(ROOT, 'tools', 'infer.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_stops_on_a_bad_infer_img_before_building_the_model(tmp_path):
    infer = _infer_tool()
    reasons = write_bad_images(str(tmp_path))
    bomb = str(tmp_path / 'bomb.png')
    with pytest.raises(infer.image_io.ImageError) as info:
        infer.main(['-c', TINY_CFG, '--infer_img', bomb])
    assert str(info.value) == '{}: {}'.format(bomb, reasons['bomb.png'])
    with pytest.raises(FileNotFoundError, match='no readable image in {}: all 6 skipped'.format(tmp_path)):
        infer.main(['-c', TINY_CFG, '--infer_dir', str(tmp_path)])
    # --max_pixels raises the limit: the bomb's size passes, its truncated data does not
    with pytest.raises(infer.image_io.ImageError, match='PNG image data cannot be decoded'):
        infer.main(['-c', TINY_CFG, '--infer_img', bomb, '--max_pixels', '4e8'])


def test_infer_saves_detections_with_the_dataset_category_ids(followups):
    with open(os.path.join(followups.infer_out, 'bbox.json')) as f:
        detections = json.load(f)
    assert {d['image_id'] for d in detections} == set(range(NUM_VAL)), 'every image needs detections'
    categories = {d['category_id'] for d in detections}
    # raw class indices would be 0..3; only 3 is also a dataset id, so any other id proves the mapping
    assert categories <= CATEGORY_IDS and categories - {3}, \
        'category ids must be the dataset ids {}, got {}'.format(sorted(CATEGORY_IDS), sorted(categories))
    assert all(0. <= d['score'] <= 1. and len(d['bbox']) == 4 for d in detections)


def test_one_fixed_batch_overfits(shapes):
    """30 AdamW steps on one image: the total loss must fall well below its first value."""
    from ppdet.core.workspace import create
    from ppdet.data.source.coco import COCODataSet

    paddle.seed(0)
    np.random.seed(0)  # the reader's RandomFlip
    cfg = fresh_config(TINY_CFG)
    dataset = COCODataSet(dataset_dir=shapes, image_dir='images/train',
                          anno_path='annotations/instances_train.json',
                          data_fields=['image', 'gt_bbox', 'gt_class', 'is_crowd'])
    batch = next(iter(create('TrainReader')(dataset, 0)))
    batch = {key: value[:1] for key, value in batch.items()}  # one image: half the cost of the reader's 2
    assert batch['gt_bbox'][0].shape[0] > 0, 'the first training image has objects'
    model = create(cfg.architecture)
    model.train()
    # 5e-3 rather than the recipe's 4e-4 warm-up: the point is a fast fall on one batch, not the schedule
    optimizer = paddle.optimizer.AdamW(learning_rate=5e-3, parameters=model.parameters(), weight_decay=1e-4,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(0.1))
    losses = []
    # one math thread whatever OMP_NUM_THREADS says: 30 steps at this rate are chaotic enough that another
    # order of float sums (2 threads) gave another trajectory, with a spike at step 22 (16.1 from 11.7)
    paddle.base.core.set_num_threads(1)
    try:
        for _ in range(30):
            loss = model(batch)['loss']
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
    finally:
        paddle.base.core.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', os.cpu_count())))
    # the denoising queries are re-noised every step, so compare the median of the last 5 steps
    assert np.median(losses[-5:]) < 0.6 * losses[0], 'loss did not fall below 60% of {:.3f}: {}'.format(
        losses[0], np.round(losses, 2).tolist())
