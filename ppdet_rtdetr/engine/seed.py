"""One seed for a whole training run: Python, NumPy, Paddle and, through them, every reader worker.

Paddle's DataLoader draws each epoch's worker seed base from the main process's NumPy generator and seeds
``random``, ``numpy`` and ``paddle`` in worker ``i`` from ``base + i`` (paddle/io/dataloader/worker.py), and ppdet's
``DistributedBatchSampler`` shuffles with ``RandomState(epoch)``; so seeding the main process before the model
and the readers are built fixes the weights' initialisation, the denoising noise, the sample order and every
random transform of every worker. On a CPU, two runs with the same seed and the same thread count then log the
same losses and end with the same weights. On a GPU some kernels still add in a varying order (atomics in the
backward of grid_sample and of index scatters, cuDNN's algorithm choice): losses agree for the first steps and
then drift apart in the last digits.
"""
import random

import numpy as np
import paddle

__all__ = ['resolve_seed', 'seed_everything']


def resolve_seed(flag, cfg):
    """The run's seed: the `--seed` flag when given, else the config's `seed:` key, else None (unseeded).

    Raises:
        ValueError: the seed is not a non-negative integer (names where it came from and the value).
    """
    source, seed = ('--seed', flag) if flag is not None else ('seed', cfg.get('seed'))
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ValueError(f'{source} must be an integer in [0, 2**32), got {seed!r}')
    return seed


def seed_everything(seed):
    """Seed Python's `random`, NumPy's global generator and Paddle's generators (every device) with `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
