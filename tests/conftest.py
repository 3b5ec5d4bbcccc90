"""Shared test fixtures: the repo and reference paths, and a tiny-config model builder."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(ROOT), 'shared', 'reference')
TINY_CFG = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')


def build_from_config(path, **overrides):
    """Build the architecture of a config file (with top-level overrides), in train mode."""
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create, load_config, merge_config
    cfg = load_config(path)
    if overrides:
        merge_config(overrides)
    return create(cfg.architecture)


@pytest.fixture
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.fail(f'reference data not found at {REFERENCE} (the shared/ folder must sit beside the repo)')
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    return REFERENCE
