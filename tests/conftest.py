"""Shared test fixtures: the repo and reference paths, and a tiny-config model builder."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# measured facts about the official checkpoints (key lists, the R18vd golden outputs, hashinit): see its README
REFERENCE = os.path.join(ROOT, 'tests', 'reference')
TINY_CFG = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')


_REGISTRY = None


def fresh_config(path, **overrides):
    """Load a config into a clean ppdet workspace (ppdet merges every load into one global dict, so keys of
    an earlier config would leak into the next one), then merge top-level overrides as `-o` does
    (``ppdet_rtdetr.cli.apply_overrides``: a mapping sets a dataset object's attributes)."""
    global _REGISTRY
    import copy

    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core import workspace
    # shallow copies: a SchemaDict holds its module object (not deep-copyable); loads only set its items
    if _REGISTRY is None:
        _REGISTRY = {k: copy.copy(v) for k, v in workspace.global_config.items()}
    workspace.global_config.clear()
    workspace.global_config.update({k: copy.copy(v) for k, v in _REGISTRY.items()})
    from ppdet_rtdetr.cli import apply_overrides
    cfg = ppdet_rtdetr.load_config(path)  # our loader: official RT-DETR configs are translated
    apply_overrides(overrides)
    return cfg


def reference_layout(name, prefix=''):
    """{key: shape tuple} of a reference key list (name<TAB>shape<TAB>dtype) in tests/reference.

    With `prefix`, only the keys under it, with the prefix stripped (e.g. 'backbone.' for a backbone alone).
    """
    out = {}
    with open(os.path.join(REFERENCE, name)) as f:
        for line in f:
            key, shape, _ = line.rstrip('\n').split('\t')
            if key.startswith(prefix):
                out[key[len(prefix):]] = tuple(int(d) for d in shape.strip('[]').split(',') if d.strip())
    return out


def model_layout(model):
    """{key: shape tuple} of a model's state dict."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_from_config(path, **overrides):
    """Build the architecture of a config file (with top-level overrides), in train mode."""
    from ppdet.core.workspace import create
    cfg = fresh_config(path, **overrides)
    return create(cfg.architecture)


@pytest.fixture
def reference_dir():
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    return REFERENCE
