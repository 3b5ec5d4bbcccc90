"""``map_in_threads`` (and ``check_coco``, which decodes with it) return only once their threads have ended for
the OS, so the DataLoader's fork that follows cannot copy a lock held by an exiting thread (the hang it fixes:
OpenCV's TLS mutex, held by a check thread's exit cleanup, blocked both forked workers in cv2.imdecode).

A pthread key whose destructor is libc's ``sleep`` makes every pool thread spend 1 s in native exit cleanup
after its Python part ended (where OpenCV's destructor holds its mutex): a plain ThreadPoolExecutor's
shutdown returns while the threads are still listed in /proc/self/task.
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.data_cases import TRAIN_ANN, make_shapes
from ppdet_rtdetr.data import check, threads

pytestmark = pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='Linux /proc: the case that forks')

_LIBC = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def slow_exit():
    """A function that makes the calling thread's native exit take 1 s, and the native ids of those threads."""
    key = ctypes.c_uint()
    assert _LIBC.pthread_key_create(ctypes.byref(key), ctypes.cast(_LIBC.sleep, ctypes.c_void_p)) == 0
    ids = []

    def mark():
        ids.append(threading.get_native_id())
        # the destructor runs as sleep(value) when the thread exits: value 1 is one second
        assert _LIBC.pthread_setspecific(key, ctypes.c_void_p(1)) == 0

    yield mark, ids
    _LIBC.pthread_key_delete(key)


def _alive(native_ids):
    return [tid for tid in native_ids if os.path.exists(f'/proc/self/task/{tid}')]


def test_the_slow_exit_outlives_a_plain_pool(slow_exit):
    """The fixture's premise: without the wait, the threads are still there when the pool's shutdown returns."""
    mark, ids = slow_exit
    with ThreadPoolExecutor(max_workers=2, initializer=mark) as pool:
        list(pool.map(abs, [1, 2]))
    assert ids and _alive(ids) == ids
    threads._wait_until_gone(ids)


def test_map_in_threads_returns_the_map_after_its_threads_ended(slow_exit):
    mark, ids = slow_exit

    def square(x):
        if threading.get_native_id() not in ids:
            mark()
        return x * x

    assert threads.map_in_threads(square, range(7), max_workers=3) == [x * x for x in range(7)]
    assert ids and not _alive(ids)


def test_check_coco_decodes_in_threads_that_have_ended_when_it_returns(tmp_path, monkeypatch, slow_exit):
    mark, ids = slow_exit
    decoded_size = check._decoded_size

    def decoded_size_marking(path):
        if threading.get_native_id() not in ids:
            mark()
        return decoded_size(path)

    monkeypatch.setattr(check, '_decoded_size', decoded_size_marking)
    root = make_shapes(tmp_path, num_train=4, num_val=1)
    report = check.check_coco(os.path.join(root, TRAIN_ANN), os.path.join(root, 'images', 'train'))
    assert len(report.images) == 4 and ids and not _alive(ids)
