"""Data-parallel training on 2 CPU processes (Paddle's gloo backend), launched as docs/distributed.md says.

``python -m paddle.distributed.launch --nproc_per_node 2`` runs tools/train.py (through dp_train_worker.py,
which also saves every rank's weights) for one step per rank on the tiny config: 3 training images, padded
to 4 by ppdet's DistributedBatchSampler, 2 per rank. Each rank starts from its own random initialisation and
sees its own images, so equal weights afterwards need both DataParallel's broadcast and its gradient
all-reduce.
"""
import os
import sys

import numpy as np
import paddle
import pytest

from helpers.workflow_helpers import TINY_CFG, dataset_overrides, make_shapes, run

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dp_train_worker.py')
RANKS = (0, 1)
BN_STATS = ('._mean', '._variance')  # BatchNorm running statistics: buffers, not trained by the optimizer


@pytest.fixture(scope='module')
def states(tmp_path_factory):
    """{(rank, 'init' | 'final'): {name: ndarray}}, plus rank 0's checkpoint as (None, 'checkpoint')."""
    base = tmp_path_factory.mktemp('data_parallel')
    data = make_shapes(str(base / 'data'), num_train=4, num_val=1)
    cwd = base / 'cwd'
    cwd.mkdir()
    command = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(len(RANKS)),
               '--log_dir', 'launch_log', WORKER, '-c', TINY_CFG, '-o', 'epoch=1', 'save_dir=out']
    run(command + dataset_overrides(data), str(cwd), str(base / 'launch.log'),
        extra_logs=[str(cwd / 'launch_log' / 'workerlog.{}'.format(rank)) for rank in RANKS])

    def load(name):
        return {key: value.numpy() for key, value in paddle.load(str(cwd / 'out' / name)).items()}

    result = {(rank, stage): load('rank{}_{}.pdparams'.format(rank, stage))
              for rank in RANKS for stage in ('init', 'final')}
    result[None, 'checkpoint'] = load('rtdetr_tiny/model_final.pdparams')
    return result


def _trained(state):
    return sorted(name for name in state if not name.endswith(BN_STATS))


def test_ranks_started_apart_and_trained(states):
    names = _trained(states[0, 'init'])
    apart = [n for n in names if not np.array_equal(states[0, 'init'][n], states[1, 'init'][n])]
    assert len(apart) > 0.2 * len(names), 'ranks should initialise randomly on their own: only {} of {} ' \
        'weights differ before training'.format(len(apart), len(names))
    for rank in RANKS:
        moved = [n for n in names if not np.array_equal(states[rank, 'init'][n], states[rank, 'final'][n])]
        assert len(moved) > 0.8 * len(names), 'rank {}: {} of {} weights changed in training'.format(
            rank, len(moved), len(names))


def test_both_ranks_hold_identical_weights(states):
    first, second = states[0, 'final'], states[1, 'final']
    assert _trained(first) == _trained(second)
    errors = {n: float(np.abs(first[n] - second[n]).max()) for n in _trained(first)}
    worst = max(errors, key=errors.get)
    assert errors[worst] == 0., 'ranks diverged: {} of {} weights differ, worst {} by {}'.format(
        sum(e > 0 for e in errors.values()), len(errors), worst, errors[worst])


def test_each_rank_normalised_its_own_images(states):
    """Plain BN (norm_type bn; sync_bn is only converted on GPU) keeps per-rank statistics: different
    statistics show that the ranks were fed different images, so the equal weights come from the all-reduce."""
    stats = [n for n in states[0, 'final'] if n.endswith(BN_STATS)]
    assert stats
    same = [n for n in stats if np.array_equal(states[0, 'final'][n], states[1, 'final'][n])]
    assert not same, 'BN statistics equal on both ranks, the data were not split: {}'.format(same[:5])


def test_rank_0_writes_the_checkpoint(states):
    checkpoint, rank0 = states[None, 'checkpoint'], states[0, 'final']
    assert sorted(checkpoint) == sorted(rank0)
    for name in checkpoint:
        np.testing.assert_array_equal(checkpoint[name], rank0[name], err_msg=name)
