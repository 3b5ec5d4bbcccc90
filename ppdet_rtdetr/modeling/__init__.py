"""Every registered module, imported in one place (importing registers them with ppdet)."""
from . import resnet  # noqa: F401
from . import hgnetv2  # noqa: F401
from . import hybrid_encoder  # noqa: F401
from . import transformer  # noqa: F401
from . import head  # noqa: F401
from . import postprocess  # noqa: F401
from . import architecture  # noqa: F401
from . import matcher  # noqa: F401
from . import criterion  # noqa: F401
from . import mask_criterion  # noqa: F401
from . import swin  # noqa: F401
from . import focalnet  # noqa: F401
from . import mask_encoder  # noqa: F401
from . import mask_transformer  # noqa: F401
from . import mask_head  # noqa: F401
from . import mask_postprocess  # noqa: F401
