"""Reader transforms that ppdet 2.6.0 lacks, added under names of their own.

ppdet's reader looks transform names up as attributes of `ppdet.data.transform`; `register_transform`
adds ours there and refuses to replace one that exists (ppdet's or another plugin's).
"""
import random

from ppdet.data import transform

__all__ = ['register_transform', 'build_transforms', 'RandomApply']


def register_transform(cls):
    """Make `cls` a transform name of ppdet's reader (`Compose` looks names up in ppdet.data.transform)."""
    if hasattr(transform, cls.__name__):
        raise ValueError(f'transform {cls.__name__} is already defined in ppdet.data.transform')
    setattr(transform, cls.__name__, cls)
    return cls


def build_transforms(cfgs):
    """[{OpName: kwargs}, ...] -> op instances, as ppdet's `Compose` builds them."""
    ops = []
    for cfg in cfgs:
        for name, kwargs in cfg.items():
            if not hasattr(transform, name):
                raise ValueError(f"unknown transform '{name}' in {cfg}")
            ops.append(getattr(transform, name)(**(kwargs or {})))
    return ops


@register_transform
class RandomApply(object):
    """Run `transforms` in order with probability `prob`, else pass the data through.

    The official RT-DETR reader writes `RandomDistort: {prob: 0.8}` and `RandomCrop: {prob: 0.8}`; ppdet
    2.6.0's ops take no `prob`, so the same recipe reads
    `RandomApply: {prob: 0.8, transforms: [{RandomDistort: {}}]}`.

    Args:
        prob (float): probability in [0, 1] of applying the transforms to a sample (or batch).
        transforms (list[dict]): ppdet transform configs.
    """

    def __init__(self, prob=0.5, transforms=()):
        if not 0 <= prob <= 1:
            raise ValueError(f'RandomApply prob must be in [0, 1], got {prob}')
        self.prob = prob
        self.transforms = build_transforms(transforms)

    def __call__(self, data, context=None):
        if random.random() < self.prob:
            for op in self.transforms:
                data = op(data)
        return data
