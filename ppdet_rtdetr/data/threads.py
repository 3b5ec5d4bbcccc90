"""``map_in_threads``: a thread-pool map whose threads have fully ended when it returns, so a fork may follow.

Paddle's DataLoader forks its reader workers right after ``parse_dataset`` (ppdet's reader calls
``iter(DataLoader)`` when it is built), and ``check_coco`` decodes the images with cv2 in a thread pool just
before. ``ThreadPoolExecutor.shutdown`` (``Thread.join``) returns once a thread's Python part is done, while
the native thread still runs its thread-exit cleanup, where OpenCV's thread-local-storage destructor locks a
global recursive mutex of OpenCV's. A fork in that window copies the mutex locked by a thread that does not
exist in the child, and the worker's first ``cv2.imdecode`` waits on it forever: training hangs before its
first step. Seen with py-spy / gdb on a loaded machine: the workers in ``Decode.apply`` -> ``cv2.imdecode`` ->
``pthread_mutex_lock`` of a recursive mutex whose owner was the TID of one of the (finished) check threads.
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

__all__ = ['map_in_threads']

# Where Linux lists a process's live threads; elsewhere (macOS, Windows) multiprocessing spawns, not forks.
_TASK_DIR = '/proc/self/task'
# A thread ends microseconds after its Python part; seconds means a starved machine, not a stuck thread.
_EXIT_TIMEOUT = 60.


def map_in_threads(fn, items, max_workers):
    """``list(map(fn, items))`` computed by up to ``max_workers`` threads.

    Contract: on return every thread it started has ended at the OS level (it is gone from
    ``/proc/self/task``), not only in Python, so no lock those threads take while exiting is held when the
    caller forks next (waits at most ``_EXIT_TIMEOUT`` seconds for that).
    """
    native_ids = []  # list.append is atomic: the pool's threads add their own ids

    def register():
        native_ids.append(threading.get_native_id())

    with ThreadPoolExecutor(max_workers=max_workers, initializer=register) as pool:
        results = list(pool.map(fn, items))
    _wait_until_gone(native_ids)
    return results


def _wait_until_gone(native_ids):
    if not os.path.isdir(_TASK_DIR):
        return
    deadline = time.monotonic() + _EXIT_TIMEOUT
    while time.monotonic() < deadline and any(os.path.exists(f'{_TASK_DIR}/{tid}') for tid in native_ids):
        time.sleep(0.001)
