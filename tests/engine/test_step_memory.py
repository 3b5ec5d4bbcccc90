"""A training step leaves no Python objects behind (host memory must not grow per step: RT-DETR#449, #207).

Paddle 3.3.1 leaks one Python list (~120 bytes) per ``paddle.to_tensor`` call; the matcher, criterion and
anchors made 16 such calls per step before they switched to ``paddle.assign`` / ``paddle.full``.
benchmarks/memory_growth.py measures the same over hundreds of steps.
"""
import gc

import paddle

from helpers.data_cases import light_config, make_shapes


def test_paddle_to_tensor_still_leaks_so_the_model_must_avoid_it():
    """If this fails, Paddle fixed the leak and the workaround comments can go."""
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(200):
        paddle.to_tensor(1.0)
    gc.collect()
    assert len(gc.get_objects()) - before >= 200


def test_training_steps_leave_no_python_objects(tmp_path):
    from ppdet.engine import Trainer
    cfg = light_config(tmp_path / 'out', make_shapes(tmp_path / 'data'))
    trainer = Trainer(cfg, mode='train')
    model, optimizer = trainer.model, trainer.optimizer
    batch = next(iter(trainer.loader))
    batch['epoch_id'] = 0
    model.train()

    def step():
        model(batch)['loss'].backward()
        optimizer.step()
        optimizer.clear_grad()

    for _ in range(2):  # warm-up: lazily created state
        step()
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(5):
        step()
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 5, '{} Python objects left behind by 5 training steps'.format(grown)
