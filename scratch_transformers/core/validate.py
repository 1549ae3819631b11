"""Input checks shared by every public function.

Every check raises ``ValueError("<name>: expected <what>, got <what came>")`` so that a user who
passes a wrong shape, dtype or option learns which argument, what was expected and what arrived.

    >>> array(np.zeros((2, 3)), "x", shape=(None, 4))
    Traceback (most recent call last):
    ...
    ValueError: x: expected shape (*, 4), got (2, 3)
"""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fail(name: str, expected: str, got) -> None:
    """Raise the library's standard ValueError."""
    raise ValueError(f"{name}: expected {expected}, got {got}")


def _fmt_shape(shape: Sequence) -> str:
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def array(
    x,
    name: str,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtype=None,
    float_dtype: bool = False,
    finite: bool = False,
) -> np.ndarray:
    """Check a floating/any array and return it as an ``np.ndarray`` (no copy when already one).

    ndim / min_ndim: exact or minimum number of dimensions. shape: exact shape with ``None`` as a
    wildcard. dtype: exact dtype required (e.g. that of another argument). float_dtype: require
    float32 or float64. finite: require no NaN/inf.
    """
    float_dtype = flag(float_dtype, "float_dtype")
    finite = flag(finite, "finite")
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, numbers.Number)):
            x = np.asarray(x)
        else:
            fail(name, "a numpy array", type(x).__name__)
    if ndim is not None and x.ndim != ndim:
        fail(name, f"{ndim}-d array", f"{x.ndim}-d array of shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        fail(name, f"at least {min_ndim}-d array", f"{x.ndim}-d array of shape {x.shape}")
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != x.ndim or any(s is not None and s != t for s, t in zip(shape, x.shape)):
            fail(name, f"shape {_fmt_shape(shape)}", x.shape)
    if float_dtype and x.dtype not in FLOAT_DTYPES:
        fail(name, "dtype float32 or float64", x.dtype)
    if dtype is not None and x.dtype != np.dtype(dtype):
        fail(name, f"dtype {np.dtype(dtype)}", x.dtype)
    if finite and not np.all(np.isfinite(x)):
        fail(name, "finite values", "NaN or inf")
    return x


def float_array(x, name: str, **kw) -> np.ndarray:
    """``array(..., float_dtype=True)``: float32 or float64."""
    return array(x, name, float_dtype=True, **kw)


def int_array(
    x,
    name: str,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    low: int | None = None,
    high: int | None = None,
) -> np.ndarray:
    """Check an integer array (token ids, bucket ids) with values in ``[low, high)``."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    x = array(x, name, ndim=ndim, shape=shape)
    if not np.issubdtype(x.dtype, np.integer):
        fail(name, "an integer array", f"dtype {x.dtype}")
    if x.size:
        if low is not None and x.min() < low:
            fail(name, f"values >= {low}", f"min {x.min()}")
        if high is not None and x.max() >= high:
            fail(name, f"values < {high}", f"max {x.max()}")
    return x


def bool_array(x, name: str, *, shape: Sequence[int | None] | None = None, ndim: int | None = None) -> np.ndarray:
    """Check a boolean mask."""
    x = array(x, name, shape=shape, ndim=ndim)
    if x.dtype != np.bool_:
        fail(name, "a boolean array", f"dtype {x.dtype}")
    return x


def broadcastable(x: np.ndarray, name: str, target: Sequence[int]) -> np.ndarray:
    """Check that ``x`` broadcasts to ``target`` (without adding leading axes beyond it)."""
    target = tuple(target)
    if x.ndim > len(target):
        fail(name, f"an array broadcastable to {target}", x.shape)
    for s, t in zip(x.shape[::-1], target[::-1]):
        if s != 1 and s != t:
            fail(name, f"an array broadcastable to {target}", x.shape)
    return x


def same_dtype(x: np.ndarray, name: str, ref: np.ndarray, ref_name: str) -> np.ndarray:
    """Require ``x.dtype == ref.dtype`` (functions never silently mix float32 and float64)."""
    if x.dtype != ref.dtype:
        fail(name, f"dtype {ref.dtype} (the dtype of {ref_name})", x.dtype)
    return x


def cache(value, cls: type, producer: str):
    """A backward's cache must be its own forward's: another op's NamedTuple unpacks just as well and
    gives garbage. Returns value."""
    if not isinstance(value, cls):
        fail("cache", f"the {cls.__name__} returned by {producer}", type(value).__name__)
    return value


def flag(value, name: str) -> bool:
    """A bool option: True or False (numpy's bool too), never a truthy stand-in such as "no", 1 or None."""
    if not isinstance(value, (bool, np.bool_)):
        fail(name, "True or False", repr(value))
    return bool(value)


def option(value, name: str, choices: Iterable):
    """Check that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        fail(name, "one of " + ", ".join(repr(c) for c in choices), repr(value))
    return value


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Check a Python/NumPy integer (not bool) in ``[low, high]`` (inclusive bounds)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, "an integer", repr(value))
    value = int(value)
    if low is not None and value < low:
        fail(name, f"an integer >= {low}", value)
    if high is not None and value > high:
        fail(name, f"an integer <= {high}", value)
    return value


def positive_int(value, name: str) -> int:
    return integer(value, name, low=1)


def real(value, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """Check a finite real scalar in the given interval (closed unless ``*_open``)."""
    low_open = flag(low_open, "low_open")
    high_open = flag(high_open, "high_open")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        fail(name, "a finite real number", repr(value))
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        fail(name, f"a number {'>' if low_open else '>='} {low}", value)
    if high is not None and (value >= high if high_open else value > high):
        fail(name, f"a number {'<' if high_open else '<='} {high}", value)
    return value


def model_widths(config, names: Iterable[str]) -> None:
    """A transformer config's widths, in this order: every field in ``names`` a positive int, ``n_heads``
    a divisor of ``d_model``, ``d_ff`` a positive int (None becomes 4 d_model, set on the frozen
    dataclass). For the configs' ``__post_init__``."""
    for name in names:
        positive_int(getattr(config, name), name)
    if config.d_model % config.n_heads:
        fail("n_heads", f"a divisor of d_model={config.d_model}", config.n_heads)
    if config.d_ff is None:
        object.__setattr__(config, "d_ff", 4 * config.d_model)
    positive_int(config.d_ff, "d_ff")


def positive(value, name: str) -> float:
    return real(value, name, low=0.0, low_open=True)


def probability(value, name: str) -> float:
    """A dropout-style probability in [0, 1)."""
    return real(value, name, low=0.0, high=1.0, high_open=True)


def sampling_logits(x, name: str = "logits") -> np.ndarray:
    """Logits (B, V) to sample or argmax a token from: float, no NaN or +inf, and at least one entry
    per row above -inf (-inf entries are masked tokens). The token is discrete, so a non-finite row
    cannot propagate as NaN: it is refused here rather than turned into token 0."""
    x = array(x, name, ndim=2, float_dtype=True)
    if x.shape[1] < 1:
        fail(name, "at least one token (V >= 1)", x.shape)
    if np.isnan(x).any() or np.isposinf(x).any():
        rows = np.nonzero(np.isnan(x).any(axis=1) | np.isposinf(x).any(axis=1))[0]
        fail(name, "no NaN or +inf (the model or its parameters are not finite)", f"one in row(s) {rows.tolist()}")
    empty = ~np.any(x > -np.inf, axis=1)
    if empty.any():
        fail(name, "at least one entry above -inf per row", f"rows {np.nonzero(empty)[0].tolist()} entirely -inf")
    return x


def rng(value, name: str = "rng") -> np.random.Generator:
    """All randomness comes from an explicit ``numpy.random.Generator``."""
    if not isinstance(value, np.random.Generator):
        fail(name, "a numpy.random.Generator (np.random.default_rng(seed))", type(value).__name__)
    return value


def float_dtype(value, name: str = "dtype") -> np.dtype:
    """A dtype argument (``np.float32``, ``"float64"``, ...) that must be float32 or float64."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        fail(name, "float32 or float64", repr(value))
    if dtype not in FLOAT_DTYPES:
        fail(name, "float32 or float64", dtype)
    return dtype


def function(value, name: str, signature: str, *, optional: bool = False):
    """A callable argument (``optional``: or None); ``signature`` says what it is called with and returns,
    e.g. ``"(rng, step) -> batch"``. Returns value."""
    optional = flag(optional, "optional")
    if not (callable(value) or (optional and value is None)):
        fail(name, f"a callable{signature}" + (" or None" if optional else ""), type(value).__name__)
    return value


def params(value, shapes: dict, *, name: str = "params", dtype=None, skip: Iterable[str] = ()) -> np.dtype | None:
    """Check a parameter dict against ``shapes`` (key -> shape, ``None`` a wildcard axis): a dict holding
    every key of ``shapes`` except those in ``skip`` (e.g. weights replaced by LoRA overrides), each an
    array of that shape and of one float dtype: ``dtype`` if given, else that of the first key checked.
    Extra keys are allowed. Returns the dtype (None when every key was skipped)."""
    if not isinstance(value, dict):
        fail(name, "a dict name -> array", type(value).__name__)
    skip = set(skip)
    for key, shape in shapes.items():
        if key in skip:
            continue
        if key not in value:
            fail(name, f"a key {key!r}", "none")
        arr = array(value[key], f"{name}[{key!r}]", shape=shape, float_dtype=dtype is None, dtype=dtype)
        dtype = arr.dtype if dtype is None else dtype
    return None if dtype is None else np.dtype(dtype)
