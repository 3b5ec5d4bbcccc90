"""Pretrained and fine-tuning weights: load what fits, list what was skipped, refuse what does not fit.

ppdet 2.6.0's ``load_pretrain_weight`` loads every checkpoint entry whose name (or a dotted suffix of the
model's name) and shape match, logs each skipped entry as its own line among the other logs, and is
content when nothing matches at all: a checkpoint of another architecture trains silently from scratch.
``load_pretrain_weight`` here keeps ppdet's signature and name matching, and

* logs the entries whose shape differs (fine-tuning COCO weights to another ``num_classes``) as ONE block
  of ``key, checkpoint shape, model shape``; those weights keep their initial values;
* raises ``WeightsMismatchError`` with the counts of matched / missing / unexpected keys when the file
  does not fit: fewer than half of the model's weights load AND fewer than half of the file's entries are
  used. A full detector checkpoint passes the first test, an ImageNet backbone checkpoint (which fills
  only the backbone) the second; a checkpoint of another network passes neither.

``RTDETRTrainer.load_weights`` (``pretrain_weights`` in training, ``weights`` in eval / infer) calls it; ppdet's
own Trainer keeps ppdet's loader. The file (``.pdparams`` or ``.safetensors``) is read with
``checkpoint.read_state`` (``safe_load``: a pickle that is not only data is refused before anything of it runs;
a checkpoint file is verified against its manifest when it has one).
"""
import collections
import os

import numpy as np
import paddle

from ppdet.utils.checkpoint import is_url
from ppdet.utils.download import get_weights_path
from ppdet.utils.logger import setup_logger

from .checkpoint import read_state, weights_file

logger = setup_logger(__name__)

__all__ = ['WeightsMismatchError', 'load_pretrain_weight', 'match_names']

# Share of the model's weights, or of the file's entries, that must load (see the module docstring).
MIN_MATCHED = 0.5
_EXAMPLES = 5


class WeightsMismatchError(ValueError):
    """The weights file does not fit the model (another architecture, depth or width)."""


def match_names(model_keys, file_keys):
    """Pairs model state-dict keys with weight-file keys by name, as ppdet's ``match_state_dict``.

    Args:
        model_keys (iterable[str]): the model's state-dict keys.
        file_keys (iterable[str]): the weight file's keys.

    Returns:
        dict[str, str]: model key -> file key: the equal key, or else the longest file key that is a
        dotted suffix of the model key (``res2.res2a.conv.weight`` fills ``backbone.res2.res2a.conv.weight``).

    Raises:
        ValueError: if one file key is the suffix match of two model keys.
    """
    file_keys = set(file_keys)
    model_keys = list(model_keys)
    pairs = {key: key for key in model_keys if key in file_keys}
    exact = set(pairs)
    claimed = {}  # file key -> the model key it fills by suffix
    for model_key in model_keys:
        if model_key in exact:
            continue
        parts = model_key.split('.')
        # longest suffix first; one that an equal-named model key already takes is not reused
        suffix = next((s for s in ('.'.join(parts[i:]) for i in range(1, len(parts))) if s in file_keys),
                      None)
        if suffix is None or suffix in exact:
            continue
        if suffix in claimed:
            raise ValueError('weight {!r} matches both {!r} and {!r} in the model'.format(
                suffix, claimed[suffix], model_key))
        pairs[model_key] = suffix
        claimed[suffix] = model_key
    return pairs


def _resolve(path):
    if is_url(path):
        path = get_weights_path(path)
    weights = weights_file(path)
    if weights is None:
        raise ValueError('Model pretrain path `{}` does not exists. If you don\'t want to load pretrain '
                         'model, please delete `pretrain_weights` field in config file.'.format(path))
    return weights


def _shape(value):
    return [int(d) for d in value.shape]


def _examples(keys):
    keys = sorted(keys)
    text = ', '.join(keys[:_EXAMPLES])
    return text + (', ...' if len(keys) > _EXAMPLES else '') if keys else '-'


def _by_module(keys):
    """Counts by the first name component: 'neck: 120, transformer: 230'."""
    counts = collections.Counter(key.split('.')[0] for key in keys)
    return ', '.join('{}: {}'.format(k, v) for k, v in sorted(counts.items()))


def load_pretrain_weight(model, pretrain_weight):
    """Loads a weights file into ``model`` for training: every entry whose name and shape fit.

    Args:
        model (paddle.nn.Layer): the model to fill.
        pretrain_weight (str): a ``.pdparams`` / ``.safetensors`` path, a checkpoint path without suffix
            (``checkpoint.weights_file``), or a ppdet URL.

    Raises:
        WeightsMismatchError: if the file does not fit (see the module docstring).
        ValueError: if the file does not exist.
        safe_load.UnsafeWeightsError: if the file's pickle is not only data (see ``checkpoint.read_state``).
        checkpoint.DamagedCheckpointError: if the file differs from its checkpoint manifest.
    """
    weights_path = _resolve(pretrain_weight)
    file_state = {k: v for k, v in read_state(weights_path).items() if hasattr(v, 'shape')}
    model_state = model.state_dict()
    pairs = match_names(model_state, file_state)
    loaded, reshaped = {}, []
    for model_key, file_key in pairs.items():
        value, target = file_state[file_key], model_state[model_key]
        if _shape(value) != _shape(target):
            reshaped.append((model_key, _shape(value), _shape(target)))
            continue
        value = paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
        loaded[model_key] = value if value.dtype == target.dtype else value.astype(target.dtype)
    missing = [k for k in model_state if k not in pairs]
    unused = set(file_state) - set(pairs.values())

    fits = len(loaded) >= MIN_MATCHED * len(model_state) or len(loaded) >= MIN_MATCHED * len(file_state)
    if not loaded or not fits:
        raise WeightsMismatchError(
            '{} does not fit this model (a checkpoint of another architecture?): {} of {} model weights '
            'match by name and shape ({} more by name only, with another shape), {} model weights are not '
            'in the file, {} of {} file entries match nothing. At least half of the model\'s weights (a '
            'detector checkpoint) or half of the file\'s entries (a backbone checkpoint) must load. Not in '
            'the file: {}. Matching nothing: {}.'.format(
                weights_path, len(loaded), len(model_state), len(reshaped), len(missing), len(unused),
                len(file_state), _by_module(missing) or '-', _examples(unused)))

    # Missing entries are filled with the model's own values: set_dict warns once per absent key.
    model.set_dict(dict(model_state, **loaded))
    if reshaped:
        width = max(len(key) for key, _, _ in reshaped)
        lines = ['  {:<{w}}  checkpoint {:<14}  model {}'.format(key, str(have), str(want), w=width)
                 for key, have, want in reshaped]
        logger.warning('Fine-tuning from {}: {} weights have another shape in the checkpoint and keep '
                       'their initial values (expected for the class head when num_classes differs):\n{}'
                       .format(weights_path, len(reshaped), '\n'.join(lines)))
    logger.info('Loaded {} of {} model weights from {}; {} not in the file keep their initial values{}; '
                '{} file entries unused{}.'.format(
                    len(loaded), len(model_state), weights_path, len(missing),
                    ' ({})'.format(_by_module(missing)) if missing else '', len(unused),
                    ' ({})'.format(_examples(unused)) if unused else ''))
