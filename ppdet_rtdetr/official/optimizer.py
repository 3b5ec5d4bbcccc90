"""Translate an official `OptimizerBuilder` with `optimizer.param_groups` (the RT-DETRv2 recipes) to ours.

PaddleDetection develop puts each trainable parameter whose name matches (``re.search``) any regex of a group's
`params` into that group, and the rest into a last group; Paddle then sets every parameter's learning-rate
factor to its group's `learning_rate` (default 1) and its decay to the group's `weight_decay`. paddledet 2.6.0's
builder matches substrings instead, so such a config goes to `RTDETROptimizerBuilder`, one rule per group:
``params`` = the group's regexes joined with ``|``, ``lr_mult`` = its `learning_rate` (a factor of the
scheduled rate, as Paddle applies it: `learning_rate: 0.00001` with base_lr 1e-4 trains at 1e-9) and its
``weight_decay``. One difference remains by design: RTDETROptimizerBuilder multiplies a parameter's own
ParamAttr learning rate (0.1 on the deformable sampling offsets) where Paddle's groups replace it.
Without param_groups the section is paddledet 2.6.0's builder's and stays as it is.
"""
from ..delegate import Delegate
from .errors import OfficialConfigError

__all__ = ['translate_optimizer']

BUILDER_KEYS = ('clip_grad_by_norm', 'clip_grad_by_value', 'regularizer', 'optimizer')
GROUP_KEYS = ('params', 'learning_rate', 'weight_decay')


def _rule(group, index, path):
    where = f'OptimizerBuilder.optimizer.param_groups[{index}]'
    if not isinstance(group, dict) or not isinstance(group.get('params'), list):
        raise OfficialConfigError(path, where, 'params', f'expected a list of regexes, got {group!r}')
    unknown = sorted(set(group) - set(GROUP_KEYS))
    if unknown:
        raise OfficialConfigError(path, where, unknown[0], f'not supported by RTDETROptimizerBuilder '
                                  f'(a group sets {list(GROUP_KEYS)})')
    rule = {'params': '|'.join(f'(?:{regex})' for regex in group['params'])}
    if 'learning_rate' in group:
        rule['lr_mult'] = group['learning_rate']
    if 'weight_decay' in group:
        rule['weight_decay'] = group['weight_decay']
    return rule


def translate_optimizer(raw, path):
    """Returns {section: value} to merge: the delegated builder and its options, or {} to keep ppdet's."""
    section = raw.get('OptimizerBuilder')
    if not isinstance(section, dict) or 'param_groups' not in (section.get('optimizer') or {}):
        return {}
    unknown = sorted(set(section) - set(BUILDER_KEYS))
    if unknown:
        raise OfficialConfigError(path, 'OptimizerBuilder', unknown[0], 'not a key of the official builder')
    if section.get('clip_grad_by_value') is not None:
        raise OfficialConfigError(path, 'OptimizerBuilder', 'clip_grad_by_value',
                                  'not supported with param_groups (RTDETROptimizerBuilder clips by norm)')
    if section.get('regularizer') not in (None, False):
        raise OfficialConfigError(path, 'OptimizerBuilder', 'regularizer',
                                  f"{section['regularizer']!r}: with param_groups only `regularizer: false` "
                                  '(decay from optimizer.weight_decay) is supported')
    optimizer = dict(section['optimizer'])
    groups = optimizer.pop('param_groups')
    rules = {f'group{i}': _rule(group, i, path) for i, group in enumerate(groups)}
    return {'OptimizerBuilder': Delegate('RTDETROptimizerBuilder'),
            'RTDETROptimizerBuilder': {'clip_grad_by_norm': section.get('clip_grad_by_norm'),
                                       'optimizer': optimizer, 'param_groups': rules}}
