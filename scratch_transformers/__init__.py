"""scratch_transformers: NumPy/numba reference implementations of recent transformer methods.

Every differentiable op is a pair ``y, cache = op_forward(...)`` / ``grads = op_backward(dy, cache)``;
see ``derivations/`` for the equations and the derivation of every backward pass.
"""

__version__ = "0.1.0"
