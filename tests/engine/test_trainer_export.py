"""RTDETRTrainer.export (ppdet's Trainer.export) works on Paddle 3, and ppdet's own Trainer is left as it is."""
import numpy as np
import paddle
import pytest

import ppdet.engine.trainer as ppdet_trainer
from conftest import TINY_CFG, fresh_config
from ppdet.engine import Trainer
from ppdet_rtdetr.engine import RTDETRTrainer


def test_export_traces_full_graph_and_matches_dygraph(tmp_path):
    trainer = RTDETRTrainer(fresh_config(TINY_CFG), mode='test')
    trainer.model.eval()
    # ppdet 2.6.0's method traces with Paddle 3's default (SOT) tracer, which has no main_program
    (tmp_path / 'ppdet').mkdir()
    with pytest.raises(RuntimeError, match="Can't call main_program when full_graph=False"):
        Trainer._get_infer_cfg_and_input_spec(trainer, str(tmp_path / 'ppdet'))
    assert ppdet_trainer.paddle is paddle, "ppdet's trainer module must see Paddle itself"

    trainer.export(str(tmp_path))
    folder = tmp_path / 'rtdetr_tiny'
    assert (folder / 'infer_cfg.yml').is_file()
    h, w = 64, 96
    image = np.random.RandomState(0).rand(1, 3, h, w).astype('float32')
    feeds = {'image': image, 'im_shape': np.array([[h, w]], 'float32'), 'scale_factor': np.ones([1, 2], 'float32')}
    with paddle.no_grad():
        expected = trainer.model({k: paddle.to_tensor(v) for k, v in feeds.items()})['bbox'].numpy()
    config = paddle.inference.Config(str(folder / 'model.json'), str(folder / 'model.pdiparams'))
    config.disable_mkldnn()
    predictor = paddle.inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feeds[name])
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    err = np.abs(got - expected).max()
    assert got.shape == expected.shape and err < 1e-4, 'exported model differs from dygraph by {}'.format(err)
