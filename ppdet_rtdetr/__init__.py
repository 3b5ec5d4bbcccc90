"""RT-DETR and RT-DETRv2 for PaddleDetection.

Importing this package registers the model modules in ppdet's workspace, so that
``ppdet.core.workspace.create(cfg.architecture)`` builds them from our YAML configs, and applies the
crash fixes of ``compat`` (ppdet 2.6.0 on Paddle 3 / Pillow 10). It changes nothing else in ppdet: what we
do differently is in ``engine.RTDETRTrainer`` and ``cli``, which our tools use.
"""
from . import compat  # noqa: F401  (Paddle 3 / Pillow 10 shims for ppdet 2.6.0; before ppdet is used)
from . import modeling  # noqa: F401  (registers modules)
from .data import transforms  # noqa: F401  (reader transforms ppdet 2.6.0 lacks: RandomApply)
from . import delegate, optim  # noqa: F401  (config hooks: !Delegate, RTDETROptimizerBuilder)
from .data import stop_epoch  # noqa: F401  (RTDETRTrainReader, BeforeStopEpoch)
from .data import coco  # noqa: F401  (RTDETRCOCODataSet: checks the annotation file when loaded)

from .config import load_config  # noqa: E402  (the one config loader of every tool)

__version__ = '0.1.0'
