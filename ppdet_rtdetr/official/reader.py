"""Translate the readers of an official RT-DETR(v2) config: `prob` of RandomDistort / RandomCrop and v2's
`transform_schedulers`, which paddledet 2.6.0's reader does not have.

- `RandomDistort: {prob: p}` (and RandomCrop) becomes `RandomApply: {prob: p, transforms: [RandomDistort: {}]}`.
- `transform_schedulers: [{Name: {start_epoch, stop_epoch}}, ...]` runs each transform called Name only in
  epochs [start_epoch, stop_epoch) (official semantics; several entries for one name all apply). Each such
  transform is wrapped in `EpochWindow`, and `TrainReader` is delegated to `RTDETRTrainReader`, which tells
  the windows the epoch before an epoch's workers start (see data/stop_epoch.py).
"""
import inspect

from ppdet.data import transform

from ..data.stop_epoch import BeforeStopEpoch
from ..data.transforms import register_transform
from ..delegate import Delegate
from .errors import OfficialConfigError

__all__ = ['EpochWindow', 'translate_readers']

# ops that took `prob` in PaddleDetection develop but not in paddledet 2.6.0
PROB_OPS = ('RandomDistort', 'RandomCrop')
READERS = ('TrainReader', 'EvalReader', 'TestReader')
TRANSFORM_LISTS = ('sample_transforms', 'batch_transforms')


@register_transform
class EpochWindow(BeforeStopEpoch):
    """Runs `transforms` only in epochs [start_epoch, stop_epoch) (0-based, as the Trainer counts).

    Args:
        transforms (list[dict]): ppdet transform configs.
        start_epoch (int): first epoch that runs them (official default 0).
        stop_epoch (int|None): first epoch that skips them again; None: never.

    Returns:
        ``window(data)``: the transforms' output inside the window, `data` unchanged outside. The reader's
        own stop_epoch does not apply: RTDETRTrainReader's ``set_epoch(epoch, reader_stop)`` sets the window.
    """

    def __init__(self, transforms, start_epoch=0, stop_epoch=None):
        super().__init__(transforms)
        self.start_epoch, self.stop_epoch = start_epoch, stop_epoch
        self.set_epoch(0, None)

    def set_epoch(self, epoch, stop_epoch=None):
        self.active = self.start_epoch <= epoch and (self.stop_epoch is None or epoch < self.stop_epoch)


def _check_op(name, kwargs, path, where):
    op = getattr(transform, name, None)
    if op is None:
        raise OfficialConfigError(path, where, name, 'this transform is not in paddledet 2.6.0 nor ppdet_rtdetr')
    params = inspect.signature(op.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise OfficialConfigError(path, where, name, f'options {unknown} are not supported by paddledet 2.6.0\'s '
                                  f'{name} (it takes {sorted(k for k in params if k != "self")})')


def _windows(schedulers, path):
    """{transform name: (start_epoch, stop_epoch)}: the intersection of every entry for that name."""
    windows = {}
    for entry in schedulers or []:
        for name, window in entry.items():
            unknown = sorted(set(window or {}) - {'start_epoch', 'stop_epoch'})
            if unknown:
                raise OfficialConfigError(path, 'TrainReader.transform_schedulers', name,
                                          f'unknown keys {unknown} (start_epoch, stop_epoch)')
            start, stop = windows.get(name, (0, None))
            start = max(start, (window or {}).get('start_epoch', 0))
            new_stop = (window or {}).get('stop_epoch')
            stop = new_stop if stop is None else (stop if new_stop is None else min(stop, new_stop))
            windows[name] = (start, stop)
    return windows


def _translate_ops(ops, windows, path, where):
    out = []
    for cfg in ops or []:
        for name, kwargs in cfg.items():
            kwargs = dict(kwargs or {})
            prob = kwargs.pop('prob', None) if name in PROB_OPS else None
            _check_op(name, kwargs, path, where)
            op = {name: kwargs}
            if prob is not None and prob != 1:
                op = {'RandomApply': {'prob': prob, 'transforms': [op]}}
            if name in windows:
                start, stop = windows[name]
                op = {'EpochWindow': {'start_epoch': start, 'stop_epoch': stop, 'transforms': [op]}}
            out.append(op)
    return out


def translate_readers(raw, path):
    """Returns the reader sections of `raw` in paddledet 2.6.0 + ppdet_rtdetr terms (a dict to merge)."""
    out = {}
    for reader in READERS:
        if not isinstance(raw.get(reader), dict):
            continue
        section = dict(raw[reader])
        windows = _windows(section.pop('transform_schedulers', None), path) if reader == 'TrainReader' else {}
        for key in TRANSFORM_LISTS:
            if key in section:
                section[key] = _translate_ops(section[key], windows, path, f'{reader}.{key}')
        if windows:
            out['TrainReader'] = Delegate('RTDETRTrainReader')
            out['RTDETRTrainReader'] = section
        else:
            out[reader] = section
    return out
