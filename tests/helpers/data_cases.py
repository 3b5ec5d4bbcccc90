"""Helpers for the data and engine tests: small datasets on disk, a light tiny config, and log capture."""
import json
import logging
import os

from conftest import TINY_CFG, fresh_config

# The tiny config with a quarter-width backbone: ~3 MB checkpoints and fast steps; the head is unchanged.
LIGHT = {'RTDETRResNet': {'width_mult': 0.25}}
TRAIN_ANN = 'annotations/instances_train.json'
VAL_ANN = 'annotations/instances_val.json'


def make_shapes(root, num_train=4, num_val=2):
    """The synthetic shapes dataset (category ids 3, 7, 11, 20; train image 4 has no box) under ``root``."""
    from ppdet_rtdetr.data import synthetic
    synthetic.make_dataset(str(root), num_train=num_train, num_val=num_val, size=96, seed=0)
    return str(root)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, data):
    with open(path, 'w') as f:
        json.dump(data, f)


def light_config(save_dir, data_root, train=None, val=None, **overrides):
    """The light tiny config on ``data_root``, with ``{attribute: value}`` set on the train / val datasets."""
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.device import resolve_device
    cfg = fresh_config(TINY_CFG, save_dir=str(save_dir), **LIGHT, **overrides)
    apply_overrides({
        'TrainDataset': dict(dataset_dir=data_root, image_dir='images/train', anno_path=TRAIN_ANN, **(train or {})),
        'EvalDataset': dict(dataset_dir=data_root, image_dir='images/val', anno_path=VAL_ANN, **(val or {})),
        'TestDataset': dict(dataset_dir=data_root, anno_path=VAL_ANN),
    })
    resolve_device(cfg)
    return cfg


class LogRecords(logging.Handler):
    """Collects the messages of one ppdet-style logger (they do not propagate, so caplog misses them)."""

    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelname, record.getMessage()))

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def checkpoint_files(save_dir):
    """Every file under save_dir (relative paths), hidden temporaries included."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(os.path.relpath(os.path.join(d, f), save_dir) for d, _, fs in os.walk(save_dir) for f in fs)
