"""`tools/train.py --seed N` / `seed: N`: same seed, same run; another seed, another run.

Three short trainings of the light tiny config run from a scratch directory with two reader workers and a
random transform in the workers (RandomDistort, RandomFlip, random resize interpolation), so the seed has to
reach the weights' initialisation, the denoising noise, the sample order and every worker.
"""
import os
import re

import numpy as np
import paddle
import pytest

from helpers.workflow_helpers import TINY_CFG, Job, dataset_overrides, make_shapes, tool_command
from ppdet_rtdetr.engine.seed import resolve_seed

# "loss: 12.345678  loss_class: ..." of every logged step; the timing fields (eta, batch_cost, ips) differ
_LOSS_PART = re.compile(r'(loss\w*): (\S+)')
_STEP = re.compile(r'Epoch: \[(\d+)\] +\[ *(\d+)/')


def _loss_log(text):
    """[(epoch, step, ((name, value), ...)), ...] of every training log line."""
    rows = []
    for line in text.splitlines():
        step = _STEP.search(line)
        if step:
            rows.append((int(step.group(1)), int(step.group(2)), tuple(_LOSS_PART.findall(line))))
    return rows


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """{name: (loss log, final state dict)} of three 2-epoch trainings: seed 5 by flag, seed 5 by config key,
    seed 6 by flag."""
    root = tmp_path_factory.mktemp('seed')
    data = make_shapes(str(root / 'shapes'), num_train=9, num_val=2)
    options = ['worker_num=2', 'RTDETRResNet.width_mult=0.25'] + dataset_overrides(data)
    # the tiny reader has RandomFlip only: add transforms that draw random numbers in the workers
    options += ['TrainReader.sample_transforms=[{Decode: {}}, {RandomDistort: {}}, {RandomFlip: {}}]',
                'TrainReader.batch_transforms=[{BatchRandomResize: {target_size: [[64, 96]], random_size: True, '
                'random_interp: True, keep_ratio: False}}, {NormalizeImage: {mean: [0., 0., 0.], '
                'std: [1., 1., 1.], norm_type: none}}, {NormalizeBox: {}}, {BboxXYXY2XYWH: {}}, {Permute: {}}]']
    # (seed flag, extra -o items) per run
    variants = {'flag5': (['--seed', '5'], []), 'key5': ([], ['seed=5']), 'flag6': (['--seed', '6'], [])}
    jobs = {}
    for name, (flags, extra) in variants.items():
        out = root / name
        out.mkdir()
        args = ['-c', TINY_CFG] + flags + ['-o', f'save_dir={out}'] + options + extra
        jobs[name] = Job(tool_command('train', args), str(out), str(out / 'train.log'))
    results = {}
    for name, job in jobs.items():
        log = _loss_log(job.wait())
        state = paddle.load(str(root / name / 'rtdetr_tiny' / 'model_final.pdparams'))
        results[name] = (log, {k: np.asarray(v) for k, v in state.items()})
    return results


def test_same_seed_logs_identical_losses_at_every_step(runs):
    log, _ = runs['flag5']
    assert len(log) == 8, log  # 8 usable images (one is empty), batch 2: 4 steps a epoch, 2 epochs
    assert runs['key5'][0] == log


def test_same_seed_ends_with_identical_weights(runs):
    a, b = runs['flag5'][1], runs['key5'][1]
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, different[:5]


def test_another_seed_gives_other_losses_and_weights(runs):
    assert runs['flag6'][0][0][2] != runs['flag5'][0][0][2]  # already the first step's losses differ
    a, c = runs['flag5'][1], runs['flag6'][1]
    assert not np.array_equal(a['transformer.enc_output.0.weight'], c['transformer.enc_output.0.weight'])


@pytest.mark.parametrize('flag, key, expected', [(None, None, None), (None, 3, 3), (7, 3, 7), (0, 3, 0)])
def test_the_flag_wins_over_the_config_key(flag, key, expected):
    cfg = {} if key is None else {'seed': key}
    assert resolve_seed(flag, cfg) == expected


@pytest.mark.parametrize('value', [-1, 2 ** 32, 1.5, '3', True])
def test_a_bad_seed_is_refused_with_its_value(value):
    with pytest.raises(ValueError, match=re.escape(f'seed must be an integer in [0, 2**32), got {value!r}')):
        resolve_seed(None, {'seed': value})
