import numpy as np
import pytest


@pytest.fixture
def rng():
    """Every test draws from its own seeded generator: reproducible by seed."""
    return np.random.default_rng(12345)
