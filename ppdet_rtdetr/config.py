"""The one config loader of the project: every tool and library entry point reads a config file through it."""
from ppdet.core import workspace

__all__ = ['load_config']


def load_config(path):
    """Load a ppdet config file (its `_BASE_` chain included) into ppdet's global config and return it.

    Args:
        path (str): a YAML config, ours or PaddleDetection's.
    Returns:
        ppdet.core.workspace.AttrDict: the merged global config, as `ppdet.core.workspace.load_config` returns it.
    """
    return workspace.load_config(path)
