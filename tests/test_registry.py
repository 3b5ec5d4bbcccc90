"""Our modules register next to ppdet's (2.6.0 or a newer source install with its own RT-DETR) without clashes."""
import subprocess
import sys
import textwrap

# names a newer PaddleDetection registers for its own RT-DETR / RT-DETRv2
NEWER_PPDET_NAMES = ['HybridEncoder', 'RTDETRTransformer', 'RTDETRTransformerv2', 'DETRPostProcess', 'PPHGNetV2',
                     'TransformerLayer', 'MaskHybridEncoder', 'RTDETRv3', 'DINOv3Head', 'FocalNet',
                     'MaskDINOLoss']
OURS = ['RTDETRDetector', 'RTDETRResNet', 'RTDETRHGNetV2', 'RTDETRHybridEncoder', 'RTDETRDeformableTransformer',
        'RTDETRHead', 'RTDETRCriterion', 'RTDETRMaskCriterion', 'RTDETRHungarianMatcher', 'RTDETRPostProcess',
        'RTDETRCOCODataSet', 'RTDETRTrainReader', 'RTDETROptimizerBuilder', 'RTDETRSwinTransformer', 'RTDETRFocalNet']

# Mask-RT-DETR's model modules and the official names of their counterparts
NEWER_PPDET_NAMES += ['MaskRTDETR', 'MaskDINOHead']
OURS += ['RTDETRMaskHybridEncoder', 'RTDETRMaskTransformer', 'RTDETRMaskHead', 'RTDETRMaskPostProcess']


def test_import_next_to_a_ppdet_that_has_the_official_names():
    code = textwrap.dedent(f'''
        from ppdet.core.workspace import global_config, register
        before = {{}}
        for name in {NEWER_PPDET_NAMES!r}:
            cls = type(name, (), {{'__init__': lambda self: None, '__module__': '__main__'}})
            if name not in global_config:
                register(cls)
            before[name] = global_config[name]
        import ppdet_rtdetr  # noqa: F401
        for name, entry in before.items():
            assert global_config[name] is entry, name + ' was overwritten'
        for name in {OURS!r}:
            assert name in global_config, name + ' is not registered'
            assert global_config[name].pymodule.__name__.startswith('ppdet_rtdetr'), name
        print('ok')
    ''')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith('ok'), res.stderr[-2000:]


def test_our_names_collide_with_nothing_in_paddledet_2_6():
    import ppdet.modeling  # noqa: F401  (everything ppdet 2.6.0 registers)
    from ppdet.core.workspace import global_config
    # registered classes only (config objects such as a loaded dataset sit in the same dict)
    theirs = {n for n, v in global_config.items()
              if hasattr(v, 'pymodule') and not v.pymodule.__name__.startswith('ppdet_rtdetr')}
    assert not theirs & set(OURS), theirs & set(OURS)
    assert not set(NEWER_PPDET_NAMES) & set(OURS)
