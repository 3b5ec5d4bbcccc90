"""Every registered module, imported in one place (importing registers them with ppdet)."""
from . import resnet  # noqa: F401
