"""A tiny training that signals itself at a chosen point: the process test_stop_signals.py runs and watches.

    python signal_train_worker.py SAVE_DIR DATA_ROOT EPOCHS SIGNAL COUNT WHERE

WHERE is ``save:<name>`` (right after the first temporary file of checkpoint ``<name>`` is written, i.e. in the
middle of its save) or ``step:<n>`` (in the forward pass of training step n, counted from 1, outside any
save). SIGNAL (TERM, INT or KILL) is sent COUNT times to the process itself, so it arrives at exactly that
point; the library has no test hook for it.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest, helpers

from helpers.data_cases import light_config  # noqa: E402

from ppdet_rtdetr.engine import RTDETRTrainer, checkpoint  # noqa: E402


def _signal_self(signum, count):
    for _ in range(count):
        os.kill(os.getpid(), signum)


def _during_save(name, signum, count):
    real_write_temp = checkpoint._write_temp
    sent = []

    def write_temp(obj, path):
        temp = real_write_temp(obj, path)
        if os.path.basename(path).startswith(name + '.') and not sent:
            sent.append(path)
            _signal_self(signum, count)
        return temp

    checkpoint._write_temp = write_temp


def main(save_dir, data_root, epochs, signame, count, where):
    signum, count = getattr(signal, 'SIG' + signame), int(count)
    kind, _, at = where.partition(':')
    if kind == 'save':
        _during_save(at, signum, count)
    trainer = RTDETRTrainer(light_config(save_dir, data_root, epoch=int(epochs)), mode='train')
    if kind == 'step':
        calls = []

        def hook(layer, inputs, outputs):
            calls.append(1)
            if len(calls) == int(at):
                _signal_self(signum, count)

        trainer.model.register_forward_post_hook(hook)
    trainer.train()


if __name__ == '__main__':
    main(*sys.argv[1:])
