"""RT-DETRv2's stop-epoch schedule: the last epochs train without strong augmentation and multi-scale.

ppdet 2.6.0 has no per-epoch transform switch, and its Trainer tells only the dataset the epoch
(``dataset.set_epoch``), *after* ``BaseDataLoader`` has already started the next epoch's worker
processes (it re-creates the iterator as soon as the previous epoch ends). A transform that read the
dataset's epoch inside a worker would therefore lag one epoch. So the schedule is two pieces:

- ``BeforeStopEpoch``: a sample or batch transform that wraps other transforms and runs them only
  while ``epoch < stop_epoch``;
- ``RTDETRTrainReader``: ppdet's ``TrainReader`` plus ``stop_epoch``. Each time the Trainer starts an
  epoch it sets that epoch on its ``BeforeStopEpoch`` gates and only then starts the epoch's workers,
  which inherit the gates' state.

The reader relies on private attributes of ppdet 2.6.0 (``BaseDataLoader._sample_transforms`` /
``_batch_transforms`` / ``dataloader`` / ``loader``, ``Compose.transforms_cls``, ``DetDataset._epoch``); each
is checked once, where the reader first needs it, and a ppdet without it stops with an error that names the
attribute and the installed ppdet version.

The config selects the reader with ``TrainReader: !Delegate {to: RTDETRTrainReader}`` (see
``ppdet_rtdetr.delegate``), so a leaf changes the schedule with one line: ``RTDETRTrainReader: {stop_epoch: 117}``.
"""
import ppdet
from ppdet.core.workspace import register
from ppdet.data.reader import TrainReader
from ppdet.utils.logger import setup_logger

from .transforms import build_transforms, register_transform

logger = setup_logger(__name__)

__all__ = ['BeforeStopEpoch', 'RTDETRTrainReader']


def _private(obj, name, owner):
    """`obj.name`, a private ppdet 2.6.0 attribute, or an error naming it and the installed ppdet version."""
    if not hasattr(obj, name):
        raise RuntimeError(f"RTDETRTrainReader (the stop-epoch schedule) reads ppdet's private attribute "
                           f"{owner}.{name}, written against ppdet 2.6.0, but the installed ppdet "
                           f"{ppdet.__version__} has no such attribute")
    return getattr(obj, name)


@register_transform
class BeforeStopEpoch(object):
    """Runs `transforms` in order while the epoch is before the reader's `stop_epoch`, else passes data through.

    Works as a sample transform (data is one sample dict) and as a batch transform (a list of samples),
    since it hands `data` to the wrapped transforms as it gets it.

    Args:
        transforms (list[dict]): ppdet transform configs, ``[{RandomExpand: {}}, ...]``.

    Returns:
        ``gate(data)`` returns the wrapped transforms' output while active, `data` unchanged otherwise.
        ``active`` is True until ``set_epoch(epoch, stop_epoch)`` is given ``epoch >= stop_epoch``
        (``stop_epoch=None`` keeps it active).
    """

    def __init__(self, transforms):
        self.transforms = build_transforms(transforms)
        self.active = True

    def set_epoch(self, epoch, stop_epoch):
        self.active = stop_epoch is None or epoch < stop_epoch

    def __call__(self, data):
        if self.active:
            for op in self.transforms:
                data = op(data)
        return data


@register
class RTDETRTrainReader(TrainReader):
    """ppdet's ``TrainReader`` with a stop epoch for its ``BeforeStopEpoch`` transforms.

    Args:
        stop_epoch (int|None): first epoch (0-based, as the Trainer counts) in which the ``BeforeStopEpoch``
            transforms are skipped; None never skips them.
        sample_transforms, batch_transforms, batch_size, shuffle, drop_last, num_classes, collate_batch,
            **kwargs: as ppdet's ``TrainReader``.

    Returns:
        ``reader(dataset, worker_num)`` returns the reader itself, iterable over the epoch that the Trainer
        last gave ``dataset.set_epoch``; ``transform_names(epoch)`` lists the transforms that run at an epoch.
    """
    __shared__ = ['num_classes']

    def __init__(self, sample_transforms=[], batch_transforms=[], batch_size=1, shuffle=True, drop_last=True,
                 num_classes=80, collate_batch=True, stop_epoch=None, **kwargs):
        super().__init__(sample_transforms, batch_transforms, batch_size, shuffle, drop_last, num_classes,
                         collate_batch, **kwargs)
        self.stop_epoch = stop_epoch
        self._ops = [op for compose in ('_sample_transforms', '_batch_transforms')
                     for op in _private(_private(self, compose, 'BaseDataLoader'), 'transforms_cls', 'Compose')]
        self._loader_epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Switch the ``BeforeStopEpoch`` gates to `epoch` (takes effect in workers started afterwards)."""
        for op in self._ops:
            if isinstance(op, BeforeStopEpoch):
                op.set_epoch(epoch, self.stop_epoch)
        if self.stop_epoch is not None and epoch == self.stop_epoch:
            logger.info(f'epoch {epoch}: stop_epoch reached, from now on training runs {self.transform_names(epoch)}')

    def transform_names(self, epoch):
        """Names of the sample and batch transforms that run at `epoch`, in order; wrappers (ops with
        `transforms`, e.g. RandomApply) are replaced by what they wrap."""
        def names(ops):
            for op in ops:
                if isinstance(op, BeforeStopEpoch) and not (self.stop_epoch is None or epoch < self.stop_epoch):
                    continue
                inner = getattr(op, 'transforms', None)
                yield from names(inner) if isinstance(inner, list) else [type(op).__name__]
        return list(names(self._ops))

    def __call__(self, dataset, worker_num, batch_sampler=None, return_list=False):
        # ppdet 2.6.0's DetDataset keeps the epoch of Trainer's set_epoch only in `_epoch`
        self._loader_epoch = _private(dataset, '_epoch', 'DetDataset')
        self.set_epoch(self._loader_epoch)
        out = super().__call__(dataset, worker_num, batch_sampler, return_list)
        for name in ('dataloader', 'loader'):
            _private(self, name, 'BaseDataLoader')
        return out

    def __iter__(self):
        epoch = self.dataset._epoch  # checked in __call__
        if self.loader is None or epoch != self._loader_epoch:
            self.set_epoch(epoch)
            self.loader = iter(self.dataloader)  # the workers start here, with the gates at `epoch`
            self._loader_epoch = epoch
        return self

    def __next__(self):
        if self.loader is None:
            self.__iter__()
        try:
            return next(self.loader)
        except StopIteration:
            # unlike BaseDataLoader, start the next epoch's workers in __iter__, after Trainer's set_epoch
            self.loader = None
            raise
