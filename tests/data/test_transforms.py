"""Reader transforms of ours: RandomApply (the official recipe's `prob` on RandomDistort / RandomCrop)."""
import random

import numpy as np
import pytest

import ppdet_rtdetr  # noqa: F401  (registers transforms)
from ppdet.data import transform
from ppdet_rtdetr.data.transforms import RandomApply, register_transform


def _sample():
    return {'image': np.full((8, 8, 3), 100, np.float32), 'gt_bbox': np.array([[1., 1., 4., 4.]], np.float32),
            'gt_class': np.array([[0]], np.int32)}


def test_random_apply_rate_and_identity():
    op = RandomApply(prob=0.3, transforms=[{'RandomFlip': {'prob': 1.0}}])
    random.seed(0)
    flipped = 0
    for _ in range(2000):
        out = op(_sample())
        flipped += int(out['gt_bbox'][0, 0] == 4.)  # x1 of a flipped box on an 8-wide image: 8 - 4
    assert abs(flipped / 2000 - 0.3) < 0.04, f'applied {flipped / 2000:.3f} of the time, want 0.3'
    assert RandomApply(prob=0., transforms=[{'RandomFlip': {'prob': 1.0}}])(_sample())['gt_bbox'][0, 0] == 1.


def test_random_apply_is_a_reader_transform_name_and_checks_its_input():
    assert transform.RandomApply is RandomApply
    with pytest.raises(ValueError, match=r"unknown transform 'NoSuchOp'"):
        RandomApply(0.5, [{'NoSuchOp': {}}])
    with pytest.raises(ValueError, match=r'prob must be in \[0, 1\], got 1.5'):
        RandomApply(1.5, [])
    with pytest.raises(ValueError, match='transform RandomFlip is already defined'):
        register_transform(type('RandomFlip', (), {}))
