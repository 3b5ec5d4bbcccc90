"""tools/train.py, plus every rank's weights on disk: the script test_data_parallel.py launches per rank.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/engine/dp_train_worker.py -c CFG -o ...

ppdet writes checkpoints on rank 0 only, so the ranks cannot be compared from them. This runs
tools/train.py's ``main()`` unchanged (same arguments, same RTDETRTrainer) with its ``train`` wrapped to save
each rank's model state dict before and after training, as ``<save_dir>/rank<r>_{init,final}.pdparams``.
"""
import functools
import importlib.util
import os

import paddle

import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet_rtdetr.engine import RTDETRTrainer

TRAIN_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          'tools', 'train.py')


def _saving_every_rank(train):
    @functools.wraps(train)
    def wrapper(self, validate=False):
        path = os.path.join(self.cfg.save_dir, 'rank{}_{{}}.pdparams'.format(paddle.distributed.get_rank()))
        os.makedirs(self.cfg.save_dir, exist_ok=True)
        # before train() wraps the model in DataParallel, which broadcasts rank 0's weights
        paddle.save(self.model.state_dict(), path.format('init'))
        train(self, validate)
        paddle.save(self.model.state_dict(), path.format('final'))

    return wrapper


def _load_train_tool():
    spec = importlib.util.spec_from_file_location('rtdetr_train_tool', TRAIN_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == '__main__':
    RTDETRTrainer.train = _saving_every_rank(RTDETRTrainer.train)
    _load_train_tool().main()
