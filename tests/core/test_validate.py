import numpy as np
import pytest

from scratch_transformers.core import validate


def test_array_messages_name_expected_and_got():
    with pytest.raises(ValueError, match=r"^x: expected shape \(\*, 4\), got \(2, 3\)$"):
        validate.array(np.zeros((2, 3)), "x", shape=(None, 4))
    with pytest.raises(ValueError, match=r"^q: expected 4-d array, got 3-d"):
        validate.array(np.zeros((2, 3, 4)), "q", ndim=4)
    with pytest.raises(ValueError, match=r"^w: expected dtype float32 or float64, got int64"):
        validate.float_array(np.zeros(3, dtype=np.int64), "w")
    with pytest.raises(ValueError, match=r"^b: expected dtype float64, got float32"):
        validate.array(np.zeros(3, np.float32), "b", dtype=np.float64)
    with pytest.raises(ValueError, match="finite"):
        validate.array(np.array([1.0, np.nan]), "x", finite=True)
    with pytest.raises(ValueError, match="numpy array"):
        validate.array("abc", "x")


def test_int_array_range_and_dtype():
    assert validate.int_array(np.array([0, 4]), "ids", low=0, high=5).dtype.kind == "i"
    with pytest.raises(ValueError, match=r"ids: expected values < 5, got max 5"):
        validate.int_array(np.array([0, 5]), "ids", low=0, high=5)
    with pytest.raises(ValueError, match=r"ids: expected values >= 0"):
        validate.int_array(np.array([-1]), "ids", low=0)
    with pytest.raises(ValueError, match="integer array"):
        validate.int_array(np.array([0.0]), "ids")


def test_scalars_and_options():
    assert validate.option("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode: expected one of 'a', 'b', got 'c'"):
        validate.option("c", "mode", ("a", "b"))
    with pytest.raises(ValueError, match="integer"):
        validate.positive_int(True, "n")
    with pytest.raises(ValueError, match=">= 1"):
        validate.positive_int(0, "n")
    with pytest.raises(ValueError, match="< 1.0"):
        validate.probability(1.0, "p")
    with pytest.raises(ValueError, match="finite real"):
        validate.real(float("nan"), "x")
    with pytest.raises(ValueError, match="Generator"):
        validate.rng(np.random.RandomState(0))


def test_broadcastable_and_bool():
    validate.broadcastable(np.zeros((1, 3, 1)), "bias", (2, 3, 5))
    with pytest.raises(ValueError, match="broadcastable"):
        validate.broadcastable(np.zeros((2, 5)), "bias", (2, 3, 5))
    with pytest.raises(ValueError, match="boolean"):
        validate.bool_array(np.zeros(3, np.int8), "mask")


def test_float_dtype_accepts_float32_float64_only():
    assert validate.float_dtype(np.float32) == np.dtype(np.float32)
    assert validate.float_dtype("float64") == np.dtype(np.float64)
    assert validate.float_dtype(None) == np.dtype(np.float64)           # as np.dtype(None)
    for bad in (np.int64, "float16", "not a dtype", int):
        with pytest.raises(ValueError, match=r"^dtype: expected float32 or float64, got"):
            validate.float_dtype(bad)


def test_params_checks_keys_shapes_and_one_dtype():
    p = {"w": np.zeros((3, 4)), "b": np.zeros(4), "extra": "ignored"}
    assert validate.params(p, {"w": (3, None), "b": (4,)}) == np.dtype(np.float64)
    assert validate.params(p, {"w": (3, 4), "missing": (1,)}, skip=("missing",)) == np.dtype(np.float64)
    assert validate.params(p, {}) is None
    with pytest.raises(ValueError, match=r"^params: expected a dict name -> array, got list"):
        validate.params([p["w"]], {"w": (3, 4)})
    with pytest.raises(ValueError, match=r"^params: expected a key 'c', got none"):
        validate.params(p, {"w": (3, 4), "c": (4,)})
    with pytest.raises(ValueError, match=r"^params\['w'\]: expected shape \(3, 5\), got \(3, 4\)"):
        validate.params(p, {"w": (3, 5)})
    with pytest.raises(ValueError, match=r"^params\['b'\]: expected dtype float64, got float32"):
        validate.params({"w": p["w"], "b": np.zeros(4, np.float32)}, {"w": (3, 4), "b": (4,)})
    with pytest.raises(ValueError, match=r"^params\['w'\]: expected dtype float32 or float64, got int64"):
        validate.params({"w": np.zeros((3, 4), np.int64)}, {"w": (3, 4)})
    with pytest.raises(ValueError, match=r"^weights\['w'\]: expected dtype float32, got float64"):
        validate.params(p, {"w": (3, 4)}, name="weights", dtype=np.float32)


def test_function_requires_a_callable():
    f = validate.function(len, "f", "(x) -> int")
    assert f is len
    assert validate.function(None, "f", "(x) -> int", optional=True) is None
    with pytest.raises(ValueError, match=r"^f: expected a callable\(x\) -> int, got int"):
        validate.function(3, "f", "(x) -> int")
    with pytest.raises(ValueError, match=r"^f: expected a callable\(x\) -> int or None, got str"):
        validate.function("x", "f", "(x) -> int", optional=True)
    with pytest.raises(ValueError, match=r"^f: expected a callable"):
        validate.function(None, "f", "(x) -> int")
