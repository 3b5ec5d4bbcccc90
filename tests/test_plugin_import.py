"""`import ppdet_rtdetr` registers our modules (exactly those listed here) and applies the crash fixes of
compat.py, and changes nothing else of ppdet or Paddle: a PP-YOLOE trained in the same process gets ppdet's
behaviour.

A fresh interpreter imports ppdet (and Paddle, Pillow) first, takes every module-level name and every class
attribute of the loaded ppdet modules, then imports ppdet_rtdetr and lists what is no longer the same object.
"""
import json
import subprocess
import sys
import textwrap

# ppdet's names this plugin used to replace for every model in the process (issue 11): they stay ppdet's own
PPDET_OWN = [
    ('ppdet.engine.trainer', 'load_pretrain_weight'),
    ('ppdet.engine.callbacks', 'save_model'),
    ('ppdet.engine.trainer', 'Trainer.train'),
    ('ppdet.engine.trainer', 'Trainer.resume_weights'),
    ('ppdet.engine.trainer', 'Trainer.load_weights'),
    ('ppdet.engine.trainer', 'Trainer._init_callbacks'),
    ('ppdet.engine.callbacks', 'Checkpointer.on_epoch_end'),
    ('ppdet.core.workspace', 'dict_merge'),
    ('ppdet.core.workspace', 'merge_config'),
    ('ppdet.utils.checkpoint', 'load_weight'),
    ('ppdet.utils.checkpoint', 'load_pretrain_weight'),
    ('paddle.nn', 'SyncBatchNorm.convert_sync_batchnorm'),
]

# what registering adds: config modules to ppdet's workspace, transforms to ppdet.data.transform (all ours, none
# replaced); a new registered class belongs in this list, and its name must collide with nothing of ppdet's
REGISTERED = ['RTDETRCOCODataSet', 'RTDETRCriterion', 'RTDETRDeformableTransformer', 'RTDETRDetector',
              'RTDETRFocalNet', 'RTDETRHGNetV2', 'RTDETRHead', 'RTDETRHungarianMatcher', 'RTDETRHybridEncoder',
              'RTDETRMaskCriterion', 'RTDETRMaskHead', 'RTDETRMaskHybridEncoder', 'RTDETRMaskPostProcess',
              'RTDETRMaskTransformer', 'RTDETROptimizerBuilder', 'RTDETRPostProcess', 'RTDETRResNet',
              'RTDETRSwinTransformer', 'RTDETRTrainReader']
TRANSFORMS = ['BeforeStopEpoch', 'DenseMosaic', 'EpochWindow', 'RandomApply']

# the crash fixes of ppdet_rtdetr/compat.py, each tested in tests/test_compat.py: (module, name) -> what changed
CRASH_FIXES = {
    'ppdet.engine.trainer.Trainer:__init__': 'print_params on Paddle 3',
    'ppdet.optimizer.ema.ModelEMA:__init__': 'ema_filter_no_grad on ppdet 2.6.0',
}

_PROBE = textwrap.dedent('''
    import inspect, json, sys
    import paddle, paddle.nn, paddle.jit, paddle.amp
    import ppdet.core.workspace, ppdet.data, ppdet.engine, ppdet.metrics, ppdet.modeling, ppdet.optimizer
    import ppdet.utils.checkpoint, ppdet.utils.cli, ppdet.utils.visualizer
    from PIL import ImageDraw

    def watched():
        return {name: module for name, module in sys.modules.items() if module is not None and (
            name.split('.')[0] == 'ppdet' or name in ('paddle', 'paddle.nn', 'paddle.jit', 'paddle.amp'))}

    def snapshot(modules):
        names, classes = {}, {}
        for name, module in modules.items():
            for attr, value in list(vars(module).items()):
                names[name + ':' + attr] = value
                if inspect.isclass(value) and value.__module__.split('.')[0] in ('ppdet', 'paddle'):
                    classes['{}.{}'.format(value.__module__, value.__qualname__)] = (value, dict(vars(value)))
        classes['PIL.ImageDraw.ImageDraw'] = (ImageDraw.ImageDraw, dict(vars(ImageDraw.ImageDraw)))
        return names, classes

    def resolve(module, dotted):
        value = sys.modules[module]
        for part in dotted.split('.'):
            value = getattr(value, part)
        return getattr(value, '__func__', value)  # a classmethod is a new bound method at every lookup

    own = {m + ':' + d: resolve(m, d) for m, d in OWN}
    modules = watched()
    names, classes = snapshot(modules)
    config = dict(ppdet.core.workspace.global_config)
    transforms = set(vars(ppdet.data.transform))

    import ppdet_rtdetr  # noqa: F401

    after_names, after_classes = snapshot(modules)
    changed = [k for k, v in names.items() if after_names[k] is not v]
    for cls, (value, attrs) in classes.items():
        now = dict(vars(value))
        changed += ['{}:{}'.format(cls, k) for k, v in attrs.items() if now.get(k, None) is not v]
    added = sorted(k for k in after_names if k not in names and not inspect.ismodule(after_names[k])
                   and not getattr(after_names[k], '__module__', '').startswith('ppdet_rtdetr'))
    added += ['{}:{}'.format(cls, k) for cls, (value, attrs) in classes.items() for k in vars(value)
              if k not in attrs]
    print(json.dumps({
        'changed': sorted(set(changed)), 'added': added,
        'not_own': [k for k, v in own.items() if resolve(*k.split(':')) is not v],
        'config_changed': sorted(k for k, v in config.items() if ppdet.core.workspace.global_config.get(k) is not v),
        'textsize_before': 'textsize' in classes['PIL.ImageDraw.ImageDraw'][1],
        'registered': sorted(k for k in ppdet.core.workspace.global_config if k not in config),
        'transforms': sorted(k for k in vars(ppdet.data.transform) if k not in transforms),
    }))
''')


def _probe():
    code = 'OWN = {!r}\n'.format(PPDET_OWN) + _PROBE
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_changes_only_the_crash_fixes_of_compat():
    report = _probe()
    assert report['not_own'] == [], 'ppdet names replaced on import: {}'.format(report['not_own'])
    assert report['changed'] == sorted(CRASH_FIXES), 'changed on import besides the crash fixes: {}'.format(
        sorted(set(report['changed']) - set(CRASH_FIXES)))
    # adding a method Pillow 10 removed is the one addition to a class (registration adds names to ppdet's
    # registries and to its transform namespace, which the probe does not count: their __module__ is ours)
    expected_added = [] if report['textsize_before'] else ['PIL.ImageDraw.ImageDraw:textsize']
    assert report['added'] == expected_added, report['added']
    assert report['config_changed'] == [], 'existing registry entries replaced: {}'.format(report['config_changed'])
    assert report['registered'] == REGISTERED, report['registered']
    assert report['transforms'] == TRANSFORMS, report['transforms']
