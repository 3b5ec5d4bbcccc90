"""Point one of ppdet's fixed config names at a registered module of ours, from YAML.

ppdet 2.6.0's Trainer builds some parts by a fixed name, e.g. ``create('TrainReader')`` and
``create('OptimizerBuilder')``. When that config entry is an object instead of a module schema,
``workspace.create`` returns the object as it is, and the Trainer calls it. So a config can write

    TrainReader: !Delegate {to: RTDETRTrainReader}
    RTDETRTrainReader:
      batch_size: 4
      ...

and the Trainer's call reaches ``create('RTDETRTrainReader')``, whose settings merge through
``_BASE_`` files and ``-o RTDETRTrainReader.batch_size=8`` like any registered module's (a YAML-tagged
object would not: a leaf could only replace it whole). No Trainer fork, no patch of ppdet.
"""
from ppdet.core import workspace
from ppdet.core.workspace import create, serializable

__all__ = ['Delegate']


@serializable
class Delegate(object):
    """A config entry that builds the registered module `to` when ppdet calls it.

    Args:
        to (str): name of a registered module (its settings are the config entry of that name).

    Returns:
        ``Delegate(to)(*args, **kwargs)`` returns ``create(to)(*args, **kwargs)``, built when called, so
        it sees every config merge made after the YAML was loaded. ``delegate[key]`` reads that module's
        setting (ppdet's LogPrinter reads ``cfg['TrainReader']['batch_size']``).
    """

    def __init__(self, to):
        self.to = to

    def __call__(self, *args, **kwargs):
        return create(self.to)(*args, **kwargs)

    def __getitem__(self, key):
        return workspace.global_config[self.to][key]
