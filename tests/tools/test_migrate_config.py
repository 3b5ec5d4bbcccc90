"""tools/migrate_config.py writes an official RT-DETR config in our module names: the new file builds the same
model, readers, optimizer and schedule as the official file it came from."""
import importlib.util
import os

import numpy as np
import paddle

from conftest import ROOT, fresh_config

V2_TINY = os.path.join(ROOT, 'tests', 'official', 'configs', 'rtdetrv2', 'rtdetrv2_r18vd_dsp_tiny.yml')
SECTIONS = ['RTDETRDetector', 'RTDETRResNet', 'RTDETRHybridEncoder', 'RTDETRDeformableTransformer', 'RTDETRHead',
            'RTDETRCriterion', 'RTDETRHungarianMatcher', 'RTDETRPostProcess', 'RTDETRTrainReader',
            'RTDETROptimizerBuilder', 'EvalReader', 'TestReader', 'TrainDataset', 'EvalDataset']


def _tool():
    spec = importlib.util.spec_from_file_location('migrate_config', os.path.join(ROOT, 'tools', 'migrate_config.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(path):
    from ppdet.core.workspace import create
    cfg = fresh_config(path)
    sections = {name: dict(cfg[name]) for name in SECTIONS}
    schedule = [(type(s).__name__, vars(s)) for s in cfg['LearningRate']['schedulers']]
    paddle.seed(0)
    weights = {k: v.numpy() for k, v in create(cfg.architecture).state_dict().items()}
    return cfg.architecture, sections, schedule, cfg['LearningRate']['base_lr'], cfg['epoch'], weights


def test_migrated_config_builds_what_the_official_one_builds(tmp_path):
    new = str(tmp_path / 'migrated.yml')
    assert _tool().main([V2_TINY, '-o', new]) == 0
    with open(new) as f:
        text = f.read()
    assert '_BASE_' not in text and 'RTDETRTransformerv2' not in text and 'DINOHead' not in text
    assert '!PiecewiseDecay' in text and 'OptimizerBuilder: !Delegate {to: RTDETROptimizerBuilder}' in text
    old_arch, old_sections, old_schedule, old_lr, old_epoch, old_weights = _snapshot(V2_TINY)
    new_arch, new_sections, new_schedule, new_lr, new_epoch, new_weights = _snapshot(new)
    assert new_arch == old_arch == 'RTDETRDetector'
    for name in SECTIONS:
        assert str(new_sections[name]) == str(old_sections[name]), name
    assert new_schedule == old_schedule and (new_lr, new_epoch) == (old_lr, old_epoch)
    assert new_weights.keys() == old_weights.keys()
    for key, value in old_weights.items():
        np.testing.assert_array_equal(new_weights[key], value, err_msg=key)


def test_a_config_that_is_not_official_rtdetr_is_refused(tmp_path, capsys):
    ours = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')
    assert _tool().main([ours, '-o', str(tmp_path / 'x.yml')]) == 1
    assert capsys.readouterr().err.startswith(f'{ours}: architecture: not an official RT-DETR config')
    assert not os.path.exists(tmp_path / 'x.yml')
