"""The compiled CPU operator when Paddle's extension folder cannot be written (ppdet_rtdetr.native.cpu_ops.load_cpu_ops).

Each step runs in its own process (a process registers the library once). The tests run as root, for whom
chmod does not make a folder read-only: the unwritable folders are a file in place of the folder (no
privilege needed) and a read-only bind mount in a mount namespace of the child's own (``unshare -m``, root
only; those steps are skipped elsewhere). One real build (~15 s), whose library the later steps reuse, and
one export (~15 s).
"""
import os
import shutil
import subprocess
import sys

import paddle
import pytest

from conftest import ROOT, TINY_CFG, build_from_config

from ppdet_rtdetr.native import cpu_ops as ops

RUN_OP = """
from ppdet_rtdetr.native import cpu_ops as ops
import paddle
path = ops.load_cpu_ops()
v, p = paddle.ones([1, 4, 2, 2]), paddle.full([1, 1, 2, 1, 2], 0.5)
print('>', path, ops.ms_deform_attn_cpu(v, [(2, 2)], p, paddle.ones([1, 1, 2, 1]), [1]).numpy().tolist())
"""
# a wrong source stands for a changed one: Paddle's check must then rebuild (which fails fast)
RUN_CHANGED = """
from ppdet_rtdetr.native import cpu_ops as ops
import sys
ops._SOURCE = sys.argv[1]
try:
    ops.load_cpu_ops()
except RuntimeError as e:
    print('>', str(e).splitlines()[0])
"""
READ_ONLY = 'mount --bind -o ro {0} {0} && exec "$@"'
LIB = os.path.join(ops.LIBRARY_NAME, ops.LIBRARY_NAME + '.so')
TAG = ops.paddle_build_tag()  # builds are kept per Paddle build, in a folder of this name


def _run(args, extension_dir, tmp_dir, read_only=False):
    """`python args` with PADDLE_EXTENSION_DIR and TMPDIR set (extension_dir read-only in the child's own mount
    namespace if asked); returns (lines starting with '> ', without it; the whole output)."""
    env = dict(os.environ, PADDLE_EXTENSION_DIR=str(extension_dir), TMPDIR=str(tmp_dir), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    command = [sys.executable] + args
    if read_only:
        command = ['unshare', '-m', 'sh', '-c', READ_ONLY.format(extension_dir), 'sh'] + command
    proc = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(str(tmp_dir)))
    output = proc.stdout + proc.stderr
    if read_only and proc.returncode != 0 and 'ppdet' not in output:  # unshare or mount refused
        pytest.skip('no private mount namespace here (not root?): ' + output.strip()[-300:])
    assert proc.returncode == 0, output[-3000:]
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith('> ')], output


def _notices(output):
    notice = 'ppdet_rtdetr.native.cpu_ops '
    return [line.split(notice, 1)[1] for line in output.splitlines() if notice in line]


def test_unwritable_extension_folder(tmp_path):
    blocked, temp = tmp_path / 'not_a_folder', tmp_path / 'tmp'
    blocked.write_text('a file where the extension folder should be')
    temp.mkdir()

    # 1. nothing built there: built in a private temporary folder, with one line naming both folders
    lines, output = _run(['-c', RUN_OP], blocked, temp)
    private = os.path.join(str(temp), os.listdir(temp)[0])
    assert os.path.basename(private).startswith('ppdet_rtdetr_ops_')
    assert lines == ['{} [[[1.0, 1.0, 1.0, 1.0]]]'.format(os.path.join(private, LIB))]
    assert _notices(output) == [
        "WARNING: Paddle's extension folder {} is not writable ([Errno 20] Not a directory: '{}') and holds no "
        "current CPU operator library: built it in {} instead".format(blocked / TAG, blocked / TAG,
                                                                    os.path.join(private, ops.LIBRARY_NAME))]

    # 2. that build as a read-only extension folder: an export with export.cpu_fused_attention uses it where
    # it is (nothing built, nothing left behind) and carries it
    shared = tmp_path / 'shared'
    shutil.copytree(private, shared / TAG, copy_function=shutil.copy2)  # keeps the library newer than its source
    shutil.rmtree(private)
    paddle.seed(0)
    weights = tmp_path / 'tiny.pdparams'
    paddle.save(build_from_config(TINY_CFG).state_dict(), str(weights))
    _, output = _run([os.path.join(ROOT, 'tools', 'export_model.py'), '-c', TINY_CFG, '--output_dir',
                      str(tmp_path / 'export'), '-o', 'weights={}'.format(weights), 'export.cpu_fused_attention=True'],
                     shared, temp, read_only=True)
    assert _notices(output) == [
        "INFO: Paddle's extension folder {0} is not writable ([Errno 30] Read-only file system: '{0}/{1}/.lock'); "
        "using the CPU operator library already built there, {0}/{2}".format(shared / TAG, ops.LIBRARY_NAME, LIB)]
    assert os.listdir(temp) == []
    with open(shared / TAG / LIB, 'rb') as built, open(tmp_path / 'export' / 'rtdetr_tiny' / (ops.LIBRARY_NAME + '.so'),
                                                 'rb') as exported:
        assert built.read() == exported.read()

    # 3. a changed source: Paddle's check, run on a private copy, rebuilds there (and fails on this source)
    broken = tmp_path / 'changed.cc'
    broken.write_text('#include "paddle/extension.h"\nthis is not C++;\n')
    before = os.stat(shared / TAG / LIB)
    lines, output = _run(['-c', RUN_CHANGED, str(broken)], shared, temp, read_only=True)
    assert lines == ["export.cpu_fused_attention needs ppdet_rtdetr's CPU operator, built from {} with a C++ "
                     "compiler (g++) and Paddle's headers; the build failed. Export without the option (the portable "
                     "graph) or install a compiler. Build output:".format(broken)]
    after = os.stat(shared / TAG / LIB)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert os.listdir(temp) == []  # the failed private build removed
