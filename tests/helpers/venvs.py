"""Cached virtual environments for the deploy clients that cannot share the test environment.

PaddleX 3.7.2 pulls numpy 2 (paddledet 2.6.0 pins numpy<1.24) and FastDeploy 1.0.7 has wheels for Python <= 3.10
only, so each runs in its own venv: built once under ~/.cache/ppdet_rtdetr/venvs/<name> (or
$PPDET_RTDETR_VENVS/<name>) and reused while its requirement list is unchanged. A venv that cannot be built (no
interpreter, no package index) makes the calling test skip with the reason.
"""
import fcntl
import glob
import os
import shutil
import subprocess
import sys

import pytest

VENV_ROOT = os.environ.get('PPDET_RTDETR_VENVS', os.path.expanduser('~/.cache/ppdet_rtdetr/venvs'))
_STAMP = 'ppdet_rtdetr_requirements.txt'  # written last: a venv without it is an interrupted build


def _tail(text, lines=15):
    return '\n'.join(text.strip().splitlines()[-lines:])


def cached_venv(name, requirements, python=sys.executable, timeout=900):
    """The interpreter of venv `name` (made by `python`) with `requirements` installed by pip.

    Args:
        requirements (list[str]): pip requirement strings (pin them: the stamp compares the list, not what
            the index serves today).
        timeout (int): seconds for the pip install.
    Returns:
        str: path of the venv's python. Calls pytest.skip, naming the step and its last output lines, when the
        venv or the install fails (e.g. no package index).
    """
    folder = os.path.join(VENV_ROOT, name)
    venv_python = os.path.join(folder, 'bin', 'python')
    want = '\n'.join([python] + list(requirements)) + '\n'

    def ready():
        stamp = os.path.join(folder, _STAMP)
        return os.path.isfile(venv_python) and os.path.isfile(stamp) and open(stamp).read() == want

    if ready():
        return venv_python
    os.makedirs(VENV_ROOT, exist_ok=True)
    with open(folder + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test processes build it once
        if ready():
            return venv_python
        shutil.rmtree(folder, ignore_errors=True)
        proc = subprocess.run([python, '-m', 'venv', folder], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f'cannot create venv {folder} with {python}: {_tail(proc.stderr)}')
        cmd = [venv_python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check'] + list(requirements)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.skip(f'pip install {" ".join(requirements)} into {folder} took over {timeout} s')
        if proc.returncode != 0:
            pytest.skip(f'pip cannot install {" ".join(requirements)} into {folder}: {_tail(proc.stderr)}')
        with open(os.path.join(folder, _STAMP), 'w') as f:
            f.write(want)
    return venv_python


def find_python(version):
    """An interpreter of Python `version` ('3.10'): $PATH's python<version>, else pyenv's; None if neither."""
    candidates = [shutil.which(f'python{version}') or '']
    candidates += sorted(glob.glob(os.path.expanduser(f'~/.pyenv/versions/{version}.*/bin/python')), reverse=True)
    for python in filter(os.path.isfile, candidates):
        proc = subprocess.run([python, '-c', 'import sys, venv; print("%d.%d" % sys.version_info[:2])'],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return python
    return None
