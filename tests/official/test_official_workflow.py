"""An official-style RT-DETRv2 config through the real tools, unchanged: tools/train.py trains it (translated
reader, param_groups, transform_schedulers), tools/export_model.py exports the trained weights, and Paddle
Inference on the export gives the dygraph detections of the same config and weights."""
import os
import re
import types

import numpy as np
import paddle
import pytest

from conftest import ROOT, fresh_config
from helpers.export_utils import assert_same_detections, paddle_infer  # noqa: F401  (fixture)
from helpers.workflow_helpers import dataset_overrides, make_shapes, run, tool_command

V2_TINY = os.path.join(ROOT, 'tests', 'official', 'configs', 'rtdetrv2', 'rtdetrv2_r18vd_dsp_tiny.yml')
LOSS_LINE = re.compile(r'Epoch: \[0\] \[\s*(\d+)/(\d+)\].* loss: ([0-9.naif+-]+)')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp('official')
    data = make_shapes(str(base / 'shapes'), 6, 2)
    cwd = base / 'cwd'
    cwd.mkdir()
    train_log = run(tool_command('train', ['-c', V2_TINY, '-o', 'save_dir=out', 'epoch=1'] + dataset_overrides(data)),
                    str(cwd), str(base / 'train.log'))
    weights = os.path.join(str(cwd), 'out', 'rtdetrv2_r18vd_dsp_tiny', 'model_final')
    export_log = run(tool_command('export_model', ['-c', V2_TINY, '-o', f'weights={weights}', '--output_dir', 'exp']),
                     str(cwd), str(base / 'export.log'))
    return types.SimpleNamespace(train_log=train_log, export_log=export_log, weights=weights,
                                 model_dir=os.path.join(str(cwd), 'exp', 'rtdetrv2_r18vd_dsp_tiny'))


def test_train_tool_trains_the_official_config(exported):
    steps = LOSS_LINE.findall(exported.train_log)
    assert steps, 'no training step logged:\n' + exported.train_log[-3000:]
    assert all(np.isfinite(float(loss)) for _, _, loss in steps), steps
    for name in ('loss_class', 'loss_bbox', 'loss_giou', 'loss_class_dn'):
        assert f'{name}:' in exported.train_log, f'{name} missing from the training log'
    assert os.path.isfile(exported.weights + '.pdparams')


def test_export_of_the_official_config_matches_dygraph(exported, paddle_infer):  # noqa: F811
    from ppdet.core.workspace import create
    from ppdet.utils.checkpoint import load_weight
    cfg = fresh_config(V2_TINY)
    model = create(cfg.architecture)
    load_weight(model, exported.weights)
    model.eval()
    rng = np.random.RandomState(0)
    h, w = cfg['eval_size']
    inputs = {'image': rng.rand(2, 3, h, w).astype('float32'), 'im_shape': np.array([[h, w]] * 2, 'float32'),
              'scale_factor': np.array([[1., 1.], [0.5, 2.]], 'float32')}
    with paddle.no_grad():
        out = model({k: paddle.to_tensor(v) for k, v in inputs.items()})
    want, want_num = out['bbox'].numpy(), out['bbox_num'].numpy()
    detector = paddle_infer.PaddleDetector(exported.model_dir, cpu_threads=1, enable_mkldnn=False)
    got, got_num = detector.predict(inputs)
    np.testing.assert_array_equal(got_num, want_num)
    assert want_num[0] == 100, 'the official default top-k (100) of DETRPostProcess'
    k = int(want_num[0])
    for i in range(2):
        assert_same_detections(got[i * k:(i + 1) * k], want[i * k:(i + 1) * k], what=f'image {i}')
