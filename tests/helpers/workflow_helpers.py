"""Shared pieces of the workflow tests: the synthetic dataset, its `-o` overrides, and running a tool.

The tools run as subprocesses from a scratch directory (never the repo), with one OpenMP thread each,
so that they prove the command line works from anywhere and the tests stay cheap on 2 cores.
"""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, 'tools')
TINY_CFG = os.path.join(ROOT, 'configs', 'tests', 'rtdetr_tiny.yml')
CATEGORY_IDS = {3, 7, 11, 20}  # ppdet_rtdetr.data.synthetic.CATEGORIES: sparse on purpose
TOOL_TIMEOUT = 600  # seconds; a hang (e.g. a collective waiting for a peer) fails instead of blocking


def make_shapes(root, num_train, num_val):
    """Write the synthetic "shapes" COCO dataset (96 px images) under `root`; return `root`.

    Image 3 of each split is empty (see synthetic._EMPTY_EVERY): ppdet skips it in training.
    """
    from ppdet_rtdetr.data.synthetic import make_dataset
    make_dataset(root, num_train=num_train, num_val=num_val, size=96, seed=0)
    return root


def dataset_overrides(root):
    """`-o` items that point the tiny config's Train/Eval/TestDataset at the dataset under `root`."""
    items = []
    for name, split in (('TrainDataset', 'train'), ('EvalDataset', 'val')):
        items += ['{}.dataset_dir={}'.format(name, root),
                  '{}.image_dir=images/{}'.format(name, split),
                  '{}.anno_path=annotations/instances_{}.json'.format(name, split)]
    # ImageFolder has no image_dir: infer takes the images from the command line, the labels from here
    items += ['TestDataset.dataset_dir={}'.format(root),
              'TestDataset.anno_path=annotations/instances_val.json']
    return items


def _read(path):
    with open(path) as f:
        return f.read()


class Job(object):
    """`command` started in `cwd` (one OpenMP thread), its stdout and stderr going to `log_path`.

    Jobs may overlap: pytest itself waits on one core meanwhile, so a second job gets the other.
    """

    def __init__(self, command, cwd, log_path, extra_logs=()):
        self.command, self.log_path, self.extra_logs = command, log_path, extra_logs
        self._log = open(log_path, 'w')
        # a session of its own, so that a timeout can end the launcher and the ranks it started
        self._process = subprocess.Popen(command, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, OMP_NUM_THREADS='1'), start_new_session=True)

    def wait(self):
        """Wait for the job (at most TOOL_TIMEOUT seconds) and return its log text.

        Raises:
            AssertionError: on a non-zero exit or a timeout, with the end of the log and of every file in
                `extra_logs` (e.g. the per-rank logs of paddle.distributed.launch) in the message.
        """
        try:
            code = self._process.wait(timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            code = 'timeout after {} s'.format(TOOL_TIMEOUT)
        finally:
            self._log.close()
        text = _read(self.log_path)
        if code != 0:
            tails = [(self.log_path, text)] + [(path, _read(path)) for path in self.extra_logs
                                               if os.path.exists(path)]
            details = '\n'.join('--- {} (last 3000 chars)\n{}'.format(path, body[-3000:]) for path, body in tails)
            raise AssertionError('{} failed ({}):\n{}'.format(' '.join(self.command), code, details))
        return text


def tool_command(name, args):
    """The command line of `tools/<name>.py` with `args`."""
    return [sys.executable, os.path.join(TOOLS, name + '.py')] + list(args)


def run(command, cwd, log_path, extra_logs=()):
    """Run `command` to its end (see `Job`); return its log text."""
    return Job(command, cwd, log_path, extra_logs).wait()
