"""RTDETRTrainer on non-finite predictions: caught at the transformer's output, before the Hungarian matcher (whose
scipy solver would fail with "matrix contains invalid numeric entries"), naming the step and the tensor; under
--amp the step is skipped as a non-finite loss is. A non-finite matching cost names the step too."""
import math
import re

import numpy as np
import paddle
import pytest

from helpers.data_cases import LogRecords, checkpoint_files, light_config, make_shapes

from ppdet_rtdetr.engine import RTDETRTrainer, prediction_check
from ppdet_rtdetr.engine.loss_guard import NonFiniteLossError, NonFinitePredictionError
from ppdet_rtdetr.engine.seed import seed_everything
from ppdet_rtdetr.modeling.matcher import NonFiniteCostError, RTDETRHungarianMatcher

ADVICE = ('no checkpoint was written for this epoch. Check the data (tools/check_dataset.py), lower the learning '
          'rate, or train without --amp.')
# what _poison_last_score_head puts into the last decoder layer's logits of the tiny config (b 2, n 20, k 4)
POISONED = 'dec_out_logits of decoder layer 2 of 2: 8 of 160 values NaN, 1 inf'


@pytest.fixture(scope='module')
def shapes8(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('shapes8'), num_train=8, num_val=1)


def _poison_last_score_head(model, calls_to_poison):
    """At the 1-based training forwards in `calls_to_poison`, the last decoder layer's score head gives NaN for
    the last matching query of each image (2 x 4 values) and inf for one class of the query before it, as a
    blown-up layer would (the values are added, so they stay in the graph). Returns {call: copy of the weights at
    that forward} (as the optimizer steps before it left them; BatchNorm statistics, which Paddle keeps as
    untrainable parameters and every forward updates, are not weights)."""
    calls, weights = [0], {}

    def hook(layer, inputs, logits):  # [b, num_dn + n, k]
        if not layer.training:
            return None
        calls[0] += 1
        weights[calls[0]] = _weights(model)
        if calls[0] not in calls_to_poison:
            return None
        bad = np.zeros(logits.shape, 'float32')
        bad[:, -1, :] = math.nan
        bad[0, -2, 0] = math.inf
        return logits + paddle.to_tensor(bad)

    model.transformer.dec_score_head[-1].register_forward_post_hook(hook)
    return weights


def _weights(model):
    return [p.numpy().copy() for p in model.parameters() if p.trainable]


def _spy_matcher(monkeypatch, status):
    """Records (epoch, step, whether the logits were finite) for every matcher call."""
    calls, match = [], RTDETRHungarianMatcher.__call__

    def spy(self, boxes, logits, gt_bbox, gt_class):
        calls.append((status['epoch_id'], status['step_id'], bool(np.isfinite(logits.numpy()).all())))
        return match(self, boxes, logits, gt_bbox, gt_class)

    monkeypatch.setattr(RTDETRHungarianMatcher, '__call__', spy)
    return calls


def _assert_same_weights(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_nan_predictions_stop_before_the_matcher_naming_step_and_tensor(tmp_path, shapes8, monkeypatch):
    save_dir = tmp_path / 'out'
    trainer = RTDETRTrainer(light_config(save_dir, shapes8, train={'allow_empty': True}, epoch=2), mode='train')
    assert len(trainer.loader) == 4  # 8 images, batch 2
    weights = _poison_last_score_head(trainer.model, calls_to_poison={3})
    matched = _spy_matcher(monkeypatch, trainer.status)
    with pytest.raises(NonFinitePredictionError) as error:
        trainer.train()

    assert str(error.value) == (
        'Non-finite predictions at epoch 0, step 2/4 (iteration 3): {}. Training stopped before the matcher and '
        'the optimizer step; {}'.format(POISONED, ADVICE))
    assert isinstance(error.value, NonFiniteLossError)
    assert 'invalid numeric entries' not in str(error.value) and error.value.__cause__ is None
    # encoder top-k + 2 decoder layers per step: steps 0 and 1 were matched, step 2 never
    assert [(e, s) for e, s, _ in matched] == [(0, 0)] * 3 + [(0, 1)] * 3
    _assert_same_weights(_weights(trainer.model), weights[3])
    assert checkpoint_files(save_dir) == []
    assert not trainer.model._forward_post_hooks and not trainer.model.transformer._forward_post_hooks, \
        'the guard must be removed after train'


def test_nonfinite_matching_cost_names_the_step(tmp_path, shapes8):
    """With the guard off the NaN reaches the matcher: its cost error still ends the run naming the step."""
    cfg = light_config(tmp_path / 'out', shapes8, train={'allow_empty': True}, epoch=1, stop_on_nonfinite_loss=False)
    trainer = RTDETRTrainer(cfg, mode='train')
    _poison_last_score_head(trainer.model, calls_to_poison={1})
    with pytest.raises(NonFinitePredictionError) as error:
        trainer.train()

    found = re.fullmatch(
        r"Non-finite matching cost at epoch 0, step 0/4 \(iteration 1\): the matcher's cost matrix of image ([01]) "
        r"\(\[q, n_i\] = \[20, (\d+)\]\): (\d+) of (\d+) values NaN, 0 inf\. Training stopped before the optimizer "
        r"step; " + re.escape(ADVICE), str(error.value))
    assert found, str(error.value)
    _, num_gts, nan, size = (int(g) for g in found.groups())
    # the image's NaN query costs NaN against each of its gts; the inf logit gives a finite cost (sigmoid 1)
    assert num_gts > 0 and nan == num_gts and size == 20 * num_gts
    assert isinstance(error.value.__cause__, NonFiniteCostError)


def test_matcher_refuses_a_nonfinite_cost_by_image():
    """Image 1's second query is NaN. Without gts of its own, its NaN rows (against image 0's gt) are never solved:
    no error. With 2 gts, its block [3 queries, 2 gts] holds 2 NaN costs."""
    matcher = RTDETRHungarianMatcher()
    boxes = paddle.full([2, 3, 4], 0.5)
    logits = paddle.to_tensor([[[0., 1.], [1., 0.], [2., -1.]], [[0., 1.], [math.nan, math.nan], [2., -1.]]])
    gt_bbox = [paddle.to_tensor([[0.5, 0.5, 0.2, 0.2]]), paddle.zeros([0, 4])]
    gt_class = [paddle.to_tensor([[0]]), paddle.zeros([0, 1], 'int64')]
    (src0, tgt0), (src1, _) = matcher(boxes, logits, gt_bbox, gt_class)
    assert len(src0) == len(tgt0) == 1 and len(src1) == 0
    gt_bbox[1] = paddle.to_tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])
    gt_class[1] = paddle.to_tensor([[1], [0]])
    with pytest.raises(NonFiniteCostError, match=r"^the matcher's cost matrix of image 1 \(\[q, n_i\] = \[3, 2\]\): "
                                                 r"2 of 6 values NaN, 0 inf$"):
        matcher(boxes, logits, gt_bbox, gt_class)


def test_amp_skips_steps_with_nonfinite_predictions_and_stops_after_patience(tmp_path, shapes8, monkeypatch):
    """--amp on CPU (the step gate stands in for the disabled loss scaler): predictions 2, 3 are poisoned (skipped),
    4 is finite (count reset, weights updated), 5, 6, 7 are poisoned: the third in a row stops. The matcher only
    ever sees finite logits."""
    cfg = light_config(tmp_path / 'out', shapes8, train={'allow_empty': True}, epoch=2, amp=True,
                       nonfinite_loss_patience=3)
    trainer = RTDETRTrainer(cfg, mode='train')
    assert trainer.use_amp and len(trainer.loader) == 4
    weights = _poison_last_score_head(trainer.model, calls_to_poison={2, 3, 5, 6, 7})
    matched = _spy_matcher(monkeypatch, trainer.status)
    with LogRecords('ppdet_rtdetr.engine.loss_guard') as log, pytest.raises(NonFinitePredictionError) as error:
        trainer.train()

    skipped = [(0, 1, 2, 1), (0, 2, 3, 2), (1, 0, 5, 1), (1, 1, 6, 2)]  # (epoch, step, iteration, in a row)
    assert log.messages == [('WARNING', 'Non-finite predictions at epoch {}, step {}/4 (iteration {}): {}. Skipping '
                                        'this step as the AMP loss scaler does ({} of 3 in a row before training '
                                        'stops, nonfinite_loss_patience).'.format(e, s, i, POISONED, n))
                            for e, s, i, n in skipped]
    assert str(error.value) == (
        'Non-finite predictions at epoch 1, step 2/4 (iteration 7): {}. That is 3 non-finite steps in a row '
        '(nonfinite_loss_patience: 3): training stopped before the optimizer step; {}'.format(POISONED, ADVICE))
    assert all(finite for _, _, finite in matched) and len(matched) == 3 * 7  # 7 forwards reached the head
    # the skipped steps (calls 2, 3 and 5, 6) left the weights alone; steps 1 and 4 moved them
    _assert_same_weights(weights[2], weights[4])
    _assert_same_weights(weights[5], weights[7])
    assert any((a != b).any() for a, b in zip(weights[4], weights[5]))
    for name, param in trainer.model.named_parameters():
        assert np.isfinite(param.numpy()).all(), '{} got a NaN update'.format(name)


def _losses_of_a_run(save_dir, data_root, **overrides):
    """Every training loss part of a seeded run (7 images with a box: 3 steps), as numpy, and the final weights."""
    seed_everything(0)
    trainer = RTDETRTrainer(light_config(save_dir, data_root, epoch=1, **overrides), mode='train')
    losses = []
    trainer.model.register_forward_post_hook(
        lambda layer, inputs, out: losses.append({k: v.numpy() for k, v in out.items()}) if layer.training else None)
    trainer.train()
    return losses, _weights(trainer.model)


def test_the_guard_leaves_finite_training_bit_equal(tmp_path, shapes8):
    guarded, guarded_weights = _losses_of_a_run(tmp_path / 'a', shapes8)
    plain, plain_weights = _losses_of_a_run(tmp_path / 'b', shapes8, stop_on_nonfinite_loss=False)
    assert len(guarded) == 3 and guarded[0].keys() == plain[0].keys() and 'loss' in guarded[0]
    for step, (a, b) in enumerate(zip(guarded, plain)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg='step {} {}'.format(step, key))
    _assert_same_weights(guarded_weights, plain_weights)


def _transformer_outputs(dn_meta):
    """A training output of 2 decoder layers, b 1, 2 denoising + 3 matching queries, k 2 (values 0.5)."""
    return (paddle.full([2, 1, 5, 4], 0.5), paddle.full([2, 1, 5, 2], 0.5), paddle.full([1, 3, 4], 0.5),
            paddle.full([1, 3, 2], 0.5), dn_meta)


def test_report_names_each_layer_and_the_denoising_queries_apart():
    dec_bboxes, dec_logits, enc_bboxes, enc_logits, dn_meta = outputs = _transformer_outputs({'dn_num_split': [2, 3]})
    dec_bboxes[0, 0, 1, :] = math.nan  # a denoising query of layer 1 (4 values)
    dec_logits[1, 0, 4, 1] = -math.inf  # a matching query of layer 2
    enc_logits[0, 0, :] = math.nan
    assert not prediction_check.all_finite(outputs)
    assert prediction_check.report(outputs) == (
        'dn_out_bboxes of decoder layer 1 of 2: 4 of 8 values NaN, 0 inf; '
        'dec_out_logits of decoder layer 2 of 2: 0 of 6 values NaN, 1 inf; '
        'enc_topk_logits: 2 of 6 values NaN, 0 inf')
    copy = prediction_check.finite_copy(outputs)
    assert copy[4] is dn_meta and prediction_check.all_finite(copy)
    for before, after in zip(outputs[:4], copy[:4]):
        before, after = before.numpy(), after.numpy()
        np.testing.assert_array_equal(after, np.where(np.isfinite(before), before, 0))


def test_report_without_denoising_and_the_eval_output():
    outputs = _transformer_outputs(None)
    assert prediction_check.all_finite(outputs) and prediction_check.report(outputs) == ''
    outputs[0][1, 0, 4, 0] = math.inf
    assert prediction_check.report(outputs) == 'dec_out_bboxes of decoder layer 2 of 2: 0 of 20 values NaN, 1 inf'
    assert prediction_check.all_finite((outputs[1][:1], outputs[1][:1], None, None, None))
    extra = paddle.to_tensor([1., math.nan])
    assert not prediction_check.all_finite(outputs[:5] + (extra,))
    assert prediction_check.report(outputs[:5] + (extra,)) == (
        'dec_out_bboxes of decoder layer 2 of 2: 0 of 20 values NaN, 1 inf; transformer output 5: 1 of 2 values NaN, '
        '0 inf')
