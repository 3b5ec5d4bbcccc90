"""A malicious weights file given to each tool's real entry point is refused before anything of it runs.

Each tool's ``main(argv)`` runs in this process on the tiny config with a payload that creates a marker
file: it must raise the refusal naming the file and the global, and no marker may appear. One tool also
runs as a command in a subprocess, to show what a user sees. Genuine checkpoints resuming through
``tools/train.py -r`` are covered by tests/tools/test_train_eval_infer.py.
"""
import importlib.util
import os
import subprocess

import numpy as np
import paddle
import pytest

from conftest import ROOT, TINY_CFG, fresh_config
from helpers.payloads import Call, payloads, write_pickle
from helpers.workflow_helpers import TOOL_TIMEOUT, dataset_overrides, make_shapes, tool_command

from ppdet_rtdetr.engine import checkpoint, safe_load

CASES = {  # case: (payload kind, weights file name, tool and its arguments given the file's path and an image)
    'infer -o weights=': ('posix.system', 'w.pdparams',
                          lambda path, image: ['infer', '--infer_img', image, '-o', 'weights=' + path]),
    'eval -o weights=': ('builtins.eval', 'w.pdparams', lambda path, image: ['eval', '-o', 'weights=' + path]),
    'export_model -o weights=': ('os.system', 'w.pdparams',
                                 lambda path, image: ['export_model', '-o', 'weights=' + path]),
    'train -o pretrain_weights=': ('subprocess.Popen', 'w.pdparams',
                                   lambda path, image: ['train', '-o', 'pretrain_weights=' + path]),
    'train -r': ('subprocess.check_call', '3.pdparams',
                 lambda path, image: ['train', '-r', path[:-len('.pdparams')], '-o']),
}


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """(dataset root, one of its images)."""
    root = make_shapes(str(tmp_path_factory.mktemp('shapes')), 2, 2)
    images = os.path.join(root, 'images', 'val')
    return root, os.path.join(images, sorted(os.listdir(images))[0])


def _tool_main(tool):
    spec = importlib.util.spec_from_file_location('safe_load_' + tool, os.path.join(ROOT, 'tools', tool + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('case', list(CASES))
def test_each_tool_refuses_a_payload_and_runs_none_of_it(tmp_path, monkeypatch, shapes, case):
    root, image = shapes
    kind, name, arguments = CASES[case]
    marker = str(tmp_path / 'marker')
    payload, reported = payloads(marker)[kind]
    path = str(tmp_path / name)
    write_pickle(path, {'backbone.conv1.weight': np.zeros([2, 2], 'float32'), 'x': [payload]}, 4)
    write_pickle(path[:-len('.pdparams')] + '.pdopt', {'last_epoch': 3}, 4)  # -r needs a complete checkpoint
    tool, *argv = arguments(path, image)
    argv = ['-c', TINY_CFG] + argv + ([] if tool == 'export_model' else
                                      (['-o'] if '-o' not in argv else []) + dataset_overrides(root))
    fresh_config(TINY_CFG)  # the tool loads its config on top of ppdet's global one: start from a clean one
    monkeypatch.chdir(tmp_path)
    with pytest.raises(safe_load.UnsafeWeightsError) as error:
        _tool_main(tool)(argv)
    assert str(error.value).startswith('{}: refused to load: its pickle names the global {}'.format(path, reported))
    assert not os.path.exists(marker), 'the payload ran'


@pytest.mark.parametrize('tool, opt_out', [('infer', ['--allow_unsafe_weights']),
                                           ('export_model', ['--allow_unsafe_weights']),
                                           ('eval', ['-o', 'allow_unsafe_weights=true'])])
def test_the_opt_out_reaches_the_loader_from_each_command_line(tmp_path, monkeypatch, shapes, tool, opt_out):
    """With the flag or the config key, the trusted file goes to paddle.load (its code runs: a marker here)."""
    from ppdet.core.workspace import global_config

    root, image = shapes
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'trusted.pdparams')
    write_pickle(path, {'x': Call('posix', 'system', 'touch ' + str(marker))}, 4)
    argv = ['-c', TINY_CFG] + (['--infer_img', image] if tool == 'infer' else []) + opt_out + ['-o', 'weights=' + path]
    argv += dataset_overrides(root) if tool != 'export_model' else []
    fresh_config(TINY_CFG)
    monkeypatch.setitem(global_config, safe_load.CONFIG_KEY, False)  # the key is removed again after the test
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as error:  # the file holds no weights of the model: refused after loading
        _tool_main(tool)(argv)
    assert not isinstance(error.value, safe_load.UnsafeWeightsError) and marker.exists(), error.value
    assert global_config[safe_load.CONFIG_KEY] is True


def test_the_command_line_reports_the_refusal(tmp_path, shapes):
    root, image = shapes
    marker = str(tmp_path / 'marker')
    path = str(tmp_path / 'downloaded.pdparams')
    write_pickle(path, {'w': np.zeros([2], 'float32'), 'x': Call('posix', 'system', 'touch ' + marker)}, 2)
    done = subprocess.run(tool_command('infer', ['-c', TINY_CFG, '--infer_img', image, '-o', 'weights=' + path]
                                       + dataset_overrides(root)),
                          cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=TOOL_TIMEOUT)
    expected = 'UnsafeWeightsError: {}: refused to load: its pickle names the global posix.system'.format(path)
    assert done.returncode != 0 and expected in done.stdout, done.stdout[-3000:]
    assert not os.path.exists(marker), 'the payload ran'


def test_a_genuine_pdparams_does_not_let_a_payload_pdopt_or_pdema_through(tmp_path):
    """Resuming reads .pdema, .pdparams and .pdopt: each file is checked, not only the first."""
    from ppdet.optimizer import ModelEMA

    layer = paddle.nn.Linear(2, 2)
    optimizer = paddle.optimizer.SGD(parameters=layer.parameters())
    marker = tmp_path / 'marker'
    for bad in ('.pdopt', '.pdema'):
        stem = str(tmp_path / bad[1:])
        checkpoint.save_model(layer.state_dict(), optimizer, str(tmp_path), bad[1:], 1, ema_model=layer.state_dict())
        write_pickle(stem + bad, {'last_epoch': Call('os', 'system', 'touch ' + str(marker))}, 3)
        os.remove(stem + '.manifest.json')  # its digests would refuse the swapped file first: test the loader
        with pytest.raises(safe_load.UnsafeWeightsError, match='^{}: refused to load: its pickle names the global '
                                                               'os.system'.format(stem + bad)):
            checkpoint.load_checkpoint(layer, stem, optimizer, ModelEMA(layer))
    assert not marker.exists()
