"""Official PaddleDetection RT-DETR / RT-DETRv2 / Mask-RT-DETR configs, read as they are: translated to our modules
on load.

`ppdet_rtdetr.load_config` calls `read_config` + `is_official_rtdetr` + `translate`; names.py is the table of
official modules and options, model.py / reader.py / optimizer.py translate one part each.
"""
from .errors import OfficialConfigError  # noqa: F401
from .loader import is_official_rtdetr, read_config, translate  # noqa: F401
from .reader import EpochWindow  # noqa: F401  (registers the transform)
