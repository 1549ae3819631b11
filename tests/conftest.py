import os

# Single-threaded BLAS for the test suite (set before numpy is imported): the tests multiply small
# matrices, where BLAS threads only add overhead, and oversubscribe the cores next to numba's threads.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import pytest


@pytest.fixture
def rng():
    """Every test draws from its own seeded generator: reproducible by seed."""
    return np.random.default_rng(12345)
