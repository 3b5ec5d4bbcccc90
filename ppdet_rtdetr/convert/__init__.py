"""PyTorch RT-DETRv2 checkpoints -> .pdparams for our configs: the name table (`names`), a torch-free safe
reader of .pth files (`torch_zip`) and the conversion (`convert`)."""
from .convert import Conversion, convert_checkpoint, convert_state_dict, load_torch_state_dict  # noqa: F401
from .torch_zip import CheckpointError, read_torch_zip  # noqa: F401
