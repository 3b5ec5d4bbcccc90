"""Optimizer with parameter groups: per-part learning rates and weight decay, as the RT-DETRv2 recipes set them.

ppdet 2.6.0's ``OptimizerBuilder`` has a ``param_groups`` option, but it matches names by substring (no
"backbone but not norm"), fails when two groups share a parameter, and Paddle's param groups *replace*
each parameter's own ``ParamAttr(learning_rate=...)`` (e.g. the 0.1 of the deformable sampling offsets).
This builder instead applies composable rules and multiplies: a parameter's learning-rate factor is its
ParamAttr factor times the ``lr_mult`` of every rule it matches.

The Trainer reaches it through ``OptimizerBuilder: !Delegate {to: RTDETROptimizerBuilder}``.
"""
import re

import paddle
import paddle.nn as nn

from ppdet.core.workspace import register

__all__ = ['RTDETROptimizerBuilder']

# Layers whose parameters `norm: true` selects. Matching the layer type, not the name, also catches norms
# named by position (`enc_output.1`, the neck's `input_proj.0.1`).
NORM_LAYERS = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm, nn.LayerNorm,
               nn.GroupNorm)
RULE_KEYS = ('params', 'norm', 'lr_mult', 'weight_decay')
# a parameter attribute: (its own ParamAttr factor, the group factor this builder computed for it)
_OWN_LR = '_rtdetr_own_lr'


def _norm_param_names(model):
    return {f'{prefix}.{name}' if prefix else name
            for prefix, layer in model.named_sublayers(include_self=True) if isinstance(layer, NORM_LAYERS)
            for name, _ in layer.named_parameters(include_sublayers=False)}


def _own_lr(param):
    """The parameter's own ParamAttr learning-rate factor.

    Paddle's optimizer writes each group's factor into its parameters' ``optimize_attr``, so after one build that
    attribute holds the product of the rules, and reading it again would multiply them once more. The builder
    remembers the factor it read and the one it computed; while the attribute still holds the computed one, the
    remembered own factor is the answer (any other value was set since, and is taken as the new own factor).
    """
    current = param.optimize_attr.get('learning_rate', 1.0)
    own, computed = getattr(param, _OWN_LR, (None, None))
    return own if own is not None and current == computed else current


def _matches(rule, name, is_norm):
    if 'params' in rule and not re.search(rule['params'], name):
        return False
    return rule.get('norm') is None or rule['norm'] == is_norm


@register
class RTDETROptimizerBuilder(object):
    """Builds a Paddle optimizer whose parameter groups come from named, composable rules.

    Args:
        optimizer (dict): ``type`` (a ``paddle.optimizer`` class name, e.g. AdamW) and its arguments; its
            ``weight_decay`` is the default of every parameter.
        param_groups (dict[str, dict]): rules by name (a dict, so a leaf config overrides one rule by name).
            A rule selects the trainable parameters whose structured name matches the regex ``params``
            (``re.search``; absent: all) and, with ``norm: true|false``, that do / do not belong to a
            norm layer. It sets ``lr_mult`` (multiplies, default 1) and/or ``weight_decay`` (the last
            matching rule in order wins).
        clip_grad_by_norm (float|None): global gradient-norm clip.

    Returns:
        ``builder(learning_rate, model)`` returns the optimizer over ``model``'s trainable parameters, one
        group per distinct (learning-rate factor, weight decay), where the factor is the parameter's own
        ``ParamAttr`` learning rate times its rules' ``lr_mult`` (the group's ``learning_rate``, which Paddle
        multiplies with the scheduled rate). Paddle writes that factor into each parameter; building again over
        the same model gives the same groups (the own factor is remembered, not multiplied twice).
    """
    __category__ = 'optim'

    def __init__(self, optimizer={'type': 'AdamW', 'weight_decay': 0.0001}, param_groups={},
                 clip_grad_by_norm=None):
        for rule_name, rule in param_groups.items():
            unknown = sorted(set(rule) - set(RULE_KEYS))
            if unknown:
                raise ValueError(f'param_groups.{rule_name}: unknown keys {unknown}, expected some of {RULE_KEYS}')
        self.optimizer = dict(optimizer)
        self.param_groups = {name: dict(rule) for name, rule in param_groups.items()}
        self.clip_grad_by_norm = clip_grad_by_norm

    def group_params(self, model):
        """[(lr factor, weight decay, [(name, param), ...]), ...] for the trainable parameters, in model order."""
        default_decay = self.optimizer.get('weight_decay', 0.)
        norm_names = _norm_param_names(model)
        groups = {}
        for name, param in model.named_parameters():
            if not param.trainable:
                continue
            own = _own_lr(param)
            lr, decay = own, default_decay
            for rule in self.param_groups.values():
                if _matches(rule, name, name in norm_names):
                    lr *= rule.get('lr_mult', 1.0)
                    decay = rule.get('weight_decay', decay)
            setattr(param, _OWN_LR, (own, lr))
            groups.setdefault((lr, decay), []).append((name, param))
        return [(lr, decay, params) for (lr, decay), params in groups.items()]

    def __call__(self, learning_rate, model):
        args = dict(self.optimizer)
        op = getattr(paddle.optimizer, args.pop('type'))
        args.pop('weight_decay', None)
        groups = [{'params': [p for _, p in params], 'learning_rate': lr, 'weight_decay': decay}
                  for lr, decay, params in self.group_params(model)]
        clip = nn.ClipGradByGlobalNorm(self.clip_grad_by_norm) if self.clip_grad_by_norm else None
        return op(learning_rate=learning_rate, parameters=groups, grad_clip=clip, **args)
