"""The tools' command line (ppdet_rtdetr/cli.py): repeated `-o` flags merge in every tool, overrides reach into
dataset objects, and a key path ppdet cannot set is refused with a message that says how to set it."""
import argparse
import importlib.util
import os

import pytest

from conftest import ROOT, TINY_CFG, fresh_config

from ppdet_rtdetr.cli import OverrideError, ToolArgsParser, apply_overrides, load_tool_config, merge_opt_lists, \
    str2bool

V2_CFG = os.path.join(ROOT, 'configs', 'rtdetrv2', 'rtdetrv2_r18vd_120e_coco.yml')
SCHEDULERS = ('[{name: PiecewiseDecay, gamma: 1.0, milestones: [30], use_warmup: true}, '
              '{name: LinearWarmup, start_factor: 0.1, steps: 5}]')


def _tool(name):
    spec = importlib.util.spec_from_file_location('tool_' + name, os.path.join(ROOT, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_opt_groups_join_at_the_end():
    assert merge_opt_lists(['-c', 'x.yml', '-o', 'a=1', '--eval', '-o', 'b=2', 'c=3', '--opt', 'd=-1']) == \
        ['-c', 'x.yml', '--eval', '-o', 'a=1', 'b=2', 'c=3', 'd=-1']
    assert merge_opt_lists(['-c', 'x.yml', '--eval']) == ['-c', 'x.yml', '--eval']


@pytest.mark.parametrize('tool, extra', [('train', ['--eval']), ('eval', ['--classwise']),
                                         ('infer', ['--infer_img', 'x.jpg']), ('export_model', ['--onnx'])])
def test_every_tool_merges_repeated_opt_flags(tool, extra):
    argv = ['-c', TINY_CFG, '-o', 'weights=w/model_final', 'epoch=3'] + extra + ['-o', 'TrainDataset.dataset_dir=d',
                                                                             '-o', 'trt=True']
    args = _tool(tool).parse_args(argv)
    assert args.opt == {'weights': 'w/model_final', 'epoch': 3, 'TrainDataset': {'dataset_dir': 'd'}, 'trt': True}


def test_check_dataset_takes_opt_overrides_of_its_config(tmp_path):
    check_dataset = _tool('check_dataset')
    args = check_dataset._parse(['-c', TINY_CFG, '-o', 'TrainDataset.dataset_dir=/data/a',
                                 '-o', 'EvalDataset.dataset_dir=/data/b', 'EvalDataset.anno_path=val.json'])
    fresh_config(TINY_CFG)
    jobs = check_dataset._jobs_from_config(args.config, args.opt, None)
    assert [(name, ann, images) for name, ann, images, _, _ in jobs] == [
        ('TrainDataset', '/data/a/annotations/instances_train2017.json', '/data/a/train2017'),
        ('EvalDataset', '/data/b/val.json', '/data/b/val2017')]


def test_an_opt_item_without_equals_is_a_parser_error(capsys):
    with pytest.raises(SystemExit):
        ToolArgsParser().parse_args(['-c', TINY_CFG, '-o', 'epoch=3', 'use_ema'])
    assert "-o takes key=value items, got 'use_ema'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ToolArgsParser().parse_args(['-o', 'epoch=3'])
    assert '-c/--config is required' in capsys.readouterr().err


def test_load_tool_config_sets_dataset_attributes_and_keeps_the_object():
    fresh_config(TINY_CFG)
    args = _tool('eval').parse_args(['-c', TINY_CFG, '-o', 'EvalDataset.dataset_dir=/data/shapes',
                                     '-o', 'EvalDataset.anno_path=annotations/instances_val.json', 'epoch=5'])
    cfg, device = load_tool_config(args, mode='eval')
    dataset = cfg['EvalDataset']
    assert type(dataset).__name__ == 'RTDETRCOCODataSet', 'ppdet 2.6.0 would have made it a dict'
    assert (dataset.dataset_dir, dataset.image_dir, dataset.anno_path, cfg.epoch) == (
        '/data/shapes', 'val2017', 'annotations/instances_val.json', 5)
    assert dataset.get_anno() == '/data/shapes/annotations/instances_val.json'
    assert device == 'cpu' and cfg.classwise is False


def test_ppdet_merge_turns_a_dataset_into_a_dict():
    """What apply_overrides avoids: ppdet 2.6.0's merge_config replaces the dataset object by the mapping."""
    from ppdet.core.workspace import create, merge_config
    fresh_config(TINY_CFG)
    merge_config({'EvalDataset': {'dataset_dir': '/data/shapes'}})
    with pytest.raises(ValueError, match='The module EvalDataset is not registered'):
        create('EvalDataset')


def test_an_attribute_the_dataset_lacks_is_refused():
    cfg = fresh_config(TINY_CFG)
    with pytest.raises(OverrideError) as error:
        apply_overrides({'TrainDataset': {'anno_file': 'typo.json'}})
    assert str(error.value) == "-o TrainDataset.anno_file: RTDETRCOCODataSet has no attribute 'anno_file'"
    assert cfg.TrainDataset.anno_path == 'annotations/instances_train2017.json'


def test_an_override_below_a_delegate_entry_sets_the_module_it_names():
    """`-o TrainReader.batch_size=8` on a config whose TrainReader is `!Delegate {to: RTDETRTrainReader}` (every v2
    config, every official v2 config after translation) sets RTDETRTrainReader, what the Trainer builds."""
    cfg = fresh_config(V2_CFG)
    assert cfg['RTDETRTrainReader']['batch_size'] == 4
    apply_overrides({'TrainReader': {'batch_size': 8, 'sample_transforms': []}})
    assert cfg['RTDETRTrainReader']['batch_size'] == 8 and cfg['RTDETRTrainReader']['sample_transforms'] == []
    assert cfg['TrainReader']['batch_size'] == 8 and type(cfg['TrainReader']).__name__ == 'Delegate'
    apply_overrides({'OptimizerBuilder': {'clip_grad_by_norm': 1.0, 'optimizer': {'weight_decay': 0.05}}})
    assert cfg['RTDETROptimizerBuilder']['clip_grad_by_norm'] == 1.0
    assert cfg['RTDETROptimizerBuilder']['optimizer'] == {'type': 'AdamW', 'weight_decay': 0.05}


def test_a_delegate_without_its_section_refuses_the_override():
    cfg = fresh_config(V2_CFG)
    del cfg['RTDETRTrainReader']
    with pytest.raises(OverrideError) as error:
        apply_overrides({'TrainReader': {'batch_size': 8}})
    assert str(error.value) == "-o TrainReader.batch_size: Delegate has no attribute 'batch_size'"


def test_a_list_index_is_refused_with_the_whole_list_to_write():
    cfg = fresh_config(TINY_CFG)
    args = _tool('train').parse_args(['-c', TINY_CFG, '-o', 'LearningRate.schedulers.0.milestones=[30]'])
    with pytest.raises(OverrideError) as error:
        apply_overrides(args.opt)
    assert str(error.value) == (
        '-o LearningRate.schedulers.0.milestones: LearningRate.schedulers is a list, and -o cannot set one item of '
        'a list (ppdet would replace the list by a dict). Give the whole list, or set it in a config file whose '
        '_BASE_ is this one. Here: -o "LearningRate.schedulers={}"'.format(SCHEDULERS))
    assert cfg['LearningRate']['schedulers'][0]['milestones'] == [100], 'a refused override must change nothing'

    # the suggested override works
    from ppdet.core.workspace import create
    apply_overrides(_tool('train').parse_args(['-c', TINY_CFG, '-o',
                                               'LearningRate.schedulers={}'.format(SCHEDULERS)]).opt)
    decay = create('LearningRate').schedulers[0]
    assert type(decay).__name__ == 'PiecewiseDecay' and decay.milestones == [30]


def test_ppdet_merge_of_a_list_index_fails_later():
    """The failure the refusal replaces: ppdet 2.6.0 turns the list into a dict and fails when building it."""
    from ppdet.core.workspace import create, merge_config
    fresh_config(TINY_CFG)
    merge_config({'LearningRate': {'schedulers': {'0': {'max_epochs': 30}}}})
    with pytest.raises(AttributeError, match="'str' object has no attribute 'use_warmup'"):
        create('LearningRate')(10)


def test_a_key_below_a_single_value_is_refused():
    fresh_config(TINY_CFG)
    with pytest.raises(OverrideError) as error:
        apply_overrides({'epoch': {'max': 3}})
    assert str(error.value) == '-o epoch.max: epoch is 2, a single value without keys below it; set it with ' \
                               '-o epoch=<value>'


def test_new_keys_and_sections_are_added_as_ppdet_does():
    cfg = fresh_config(TINY_CFG)
    apply_overrides({'nonfinite_loss_patience': 4, 'MyNewSection': {'a': {'b': 1}}})
    assert cfg.nonfinite_loss_patience == 4 and cfg['MyNewSection'] == {'a': {'b': 1}}


def test_str2bool_reads_ppdet_spellings():
    assert [str2bool(v) for v in ('True', 'yes', '1', 'False', 'n', '0')] == [True] * 3 + [False] * 3
    with pytest.raises(argparse.ArgumentTypeError, match="expected a boolean, got 'maybe'"):
        str2bool('maybe')
