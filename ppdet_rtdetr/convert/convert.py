"""Convert the authors' PyTorch RT-DETRv2 checkpoints to a .pdparams state dict for one of our configs."""
import os

import numpy as np
import paddle
from ppdet.core.workspace import create

from ..config import load_config
from .names import DROPPED, EMBEDDINGS, PADDED_EMBEDDINGS, blocks_per_stage, torch_to_paddle_name
from .torch_zip import CheckpointError, read_torch_zip

__all__ = ['Conversion', 'convert_state_dict', 'load_torch_state_dict', 'convert_checkpoint']

# buffers that are constants of the config (1 / points of each level): a different value means a checkpoint
# of another model even when the shape agrees ([3, 6, 3] and [4, 4, 4] both have 12 points)
_CONSTANT_BUFFERS = ('num_points_scale',)


class Conversion(object):
    """Result of mapping a torch state dict onto a model's state dict.

    Args:
        state (dict[str, np.ndarray]): converted entries under Paddle names, in the model's dtypes.
        unmapped (list[str]): torch names whose Paddle name the model does not have.
        missing (list[str]): model names that no torch entry maps to.
        mismatched (list[str]): 'torch name -> paddle name: why' for entries that map but do not fit.
        dropped (list[str]): torch entries left out on purpose (BN step counters, recomputed anchors).

    Returns:
        ``complete`` is True when nothing is unmapped, missing or mismatched; ``report()`` lists every such key.
    """

    def __init__(self, state, unmapped, missing, mismatched, dropped):
        self.state, self.unmapped, self.missing = state, unmapped, missing
        self.mismatched, self.dropped = mismatched, dropped

    @property
    def complete(self):
        return not (self.unmapped or self.missing or self.mismatched)

    def report(self):
        lines = [f'{len(self.state)} entries converted, {len(self.dropped)} dropped (step counters, anchors), '
                 f'{len(self.unmapped)} unmapped, {len(self.missing)} missing, {len(self.mismatched)} mismatched']
        lines += [f'  unmapped (not in the model): {n}' for n in self.unmapped]
        lines += [f'  missing (not in the checkpoint): {n}' for n in self.missing]
        lines += [f'  mismatched: {m}' for m in self.mismatched]
        return '\n'.join(lines)


def _convert_value(torch_name, value, want_shape):
    """The torch array in Paddle layout, or a string saying why it cannot fit `want_shape`."""
    if value.ndim == 2 and not EMBEDDINGS.match(torch_name):
        value = value.T  # Linear: torch [out, in] -> Paddle [in, out]
    if PADDED_EMBEDDINGS.match(torch_name) and value.shape[0] == want_shape[0] + 1:
        value = value[:-1]  # drop the padding_idx row
    if tuple(value.shape) != tuple(want_shape):
        return f'shape {list(value.shape)} (in Paddle layout) but the model has {list(want_shape)}'
    return value


def convert_state_dict(torch_state, model_state):
    """Map a torch RT-DETRv2 state dict (name -> np.ndarray) onto `model_state` (name -> array-like with
    .shape / .dtype, e.g. the model's state_dict() converted to numpy)."""
    stage_blocks = blocks_per_stage(torch_state)
    state, unmapped, mismatched, dropped, reported = {}, [], [], [], set()
    for torch_name, value in torch_state.items():
        if DROPPED.search(torch_name):
            dropped.append(torch_name)
            continue
        name = torch_to_paddle_name(torch_name, stage_blocks)
        if name not in model_state:
            unmapped.append(torch_name)
            continue
        want = np.asarray(model_state[name])
        reported.add(name)
        converted = _convert_value(torch_name, np.asarray(value), want.shape)
        if isinstance(converted, str):
            mismatched.append(f'{torch_name} -> {name}: {converted}')
        elif name.rsplit('.', 1)[-1] in _CONSTANT_BUFFERS and not np.allclose(converted, want, rtol=1e-6):
            got, config = (np.round(a.astype(float), 4).tolist() for a in (converted, want))
            mismatched.append(f'{torch_name} -> {name}: values {got} but the config gives {config} '
                              '(other num_decoder_points)')
        else:
            state[name] = np.ascontiguousarray(converted).astype(want.dtype)
    missing = [n for n in model_state if n not in reported]
    return Conversion(state, unmapped, missing, mismatched, dropped)


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values())


def load_torch_state_dict(path):
    """The model state dict of a torch RT-DETRv2 checkpoint: its `ema` -> `module`, else `model`, else the
    file itself when it is a bare state dict. Raises CheckpointError naming `path`."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such file')
    ckpt = read_torch_zip(path)
    if isinstance(ckpt, dict):
        ema = ckpt.get('ema')
        for candidate in (ema.get('module') if isinstance(ema, dict) else None, ckpt.get('model'), ckpt):
            if _is_state_dict(candidate):
                return candidate
    keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{path}: no model state dict in it (looked for 'ema'.'module', 'model' and a bare "
                          f'state dict; it holds {keys})')


def convert_checkpoint(src, config, out, allow_partial=False):
    """Convert the torch checkpoint `src` for the model of YAML `config` and save it to `out` (.pdparams).

    Returns the Conversion. Raises CheckpointError (naming `src`) for an unreadable file, or for a model that
    does not fit unless `allow_partial`, in which case whatever fits is saved.
    """
    torch_state = load_torch_state_dict(src)
    cfg = load_config(config)
    model = create(cfg.architecture)  # importing ppdet_rtdetr.convert imported ppdet_rtdetr: modules registered
    model_state = {k: v.numpy() for k, v in model.state_dict().items()}
    conversion = convert_state_dict(torch_state, model_state)
    if not conversion.complete and not allow_partial:
        raise CheckpointError(f'{src}: does not fit {config} (use --allow_partial to keep what fits)\n'
                              + conversion.report())
    paddle.save({k: paddle.to_tensor(v) for k, v in conversion.state.items()}, out)
    return conversion
