"""The small-data / fine-tuning benchmarks' helpers: input-size overrides as ppdet merges them, first AP50 hit."""
import os
import sys

from conftest import ROOT, fresh_config

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))  # the lab's scripts and their library, `harness`
from train_runs import first_reaching, size_overrides  # noqa: E402


def _merged(config, reader_key, size):
    from ppdet_rtdetr.cli import ToolArgsParser, apply_overrides
    cfg = fresh_config(os.path.join(ROOT, config))
    # as tools/train.py reads them
    apply_overrides(ToolArgsParser().parse_args(['-c', config, '-o', *size_overrides(size, reader_key)]).opt)
    return cfg


def test_size_overrides_reach_the_train_and_eval_readers():
    cfg = _merged('configs/demo/rtdetr_r18vd_shapes.yml', 'TrainReader', 96)
    assert cfg.eval_size == [96, 96]
    train = cfg['TrainReader']['batch_transforms']
    assert train[0] == {'BatchRandomResize': {'target_size': [[96, 96]], 'random_size': True,
                                              'random_interp': True, 'keep_ratio': False}}
    assert [list(t)[0] for t in train] == ['BatchRandomResize', 'NormalizeImage', 'NormalizeBox', 'BboxXYXY2XYWH',
                                           'Permute']
    evaluate = cfg['EvalReader']['sample_transforms']
    assert evaluate[1] == {'Resize': {'target_size': [96, 96], 'keep_ratio': False, 'interp': 2}}
    # the sample transforms (and the mosaic of the small-data config) are left as they are
    cfg = _merged('configs/small_data/rtdetr_r18vd_small_data.yml', 'RTDETRTrainReader', 96)
    reader = cfg['RTDETRTrainReader']
    assert reader['batch_transforms'][0]['BatchRandomResize']['target_size'] == [[96, 96]]
    assert 'DenseMosaic' in reader['sample_transforms'][1]['BeforeStopEpoch']['transforms'][0]


def test_first_reaching_is_the_first_evaluation_at_or_above():
    curve = {'evaluations': [{'iteration': 26, 'wall_s': 100, 'ap50': 0.2}, {'iteration': 52, 'wall_s': 190,
             'ap50': 0.5}, {'iteration': 78, 'wall_s': 280, 'ap50': 0.45}, {'iteration': 104, 'wall_s': 370,
             'ap50': 0.6}]}
    assert first_reaching(curve, 0.5) == {'iteration': 52, 'wall_s': 190}
    assert first_reaching(curve, 0.55) == {'iteration': 104, 'wall_s': 370}
    assert first_reaching(curve, 0.7) is None
