"""resolve_device: a config written for GPU training runs on a CPU-only Paddle build, and an available
accelerator is kept."""
import paddle
import pytest

from ppdet.core.workspace import AttrDict
from ppdet_rtdetr import device


def test_use_gpu_falls_back_to_cpu_on_a_cpu_build(monkeypatch):
    if paddle.is_compiled_with_cuda():
        pytest.skip('needs a CPU-only Paddle build')
    with pytest.raises(ValueError, match="The device should not be 'gpu'"):
        paddle.set_device('gpu')
    warnings = []
    monkeypatch.setattr(device.logger, 'warning', warnings.append)
    cfg = AttrDict(use_gpu=True, use_xpu=False)
    assert device.resolve_device(cfg) == 'cpu'
    assert paddle.get_device() == 'cpu'
    assert dict(cfg) == {'use_gpu': False, 'use_npu': False, 'use_xpu': False, 'use_mlu': False}
    assert len(warnings) == 1 and 'use_gpu' in warnings[0], warnings


def test_resolve_device_keeps_an_available_accelerator(monkeypatch):
    chosen = []
    monkeypatch.setattr(device.paddle, 'set_device', chosen.append)
    monkeypatch.setattr(device, '_DEVICES', (('use_gpu', 'gpu', lambda: False),
                                             ('use_xpu', 'xpu', lambda: True)))
    cfg = AttrDict(use_gpu=True, use_xpu=True)
    assert device.resolve_device(cfg) == 'xpu' and chosen == ['xpu']
    assert dict(cfg) == {'use_gpu': False, 'use_xpu': True}
