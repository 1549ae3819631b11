"""Packed ternary weights and the add/subtract lookup-table kernel: bit-exact packing, integer results equal to the
integer product, float results equal to the dequantised dense product, the kernel without JIT."""

import os
import subprocess
import sys

import numpy as np
import pytest

from scratch_transformers.matmulfree.bitlinear import bitlinear_forward
from scratch_transformers.matmulfree.ternary_kernel import (PackedTernary, bitlinear_packed, pack_ternary, pack_weight,
                                                            ternary_linear, ternary_matmul_int, unpack_ternary)


def codes_of(rng, d_in, d_out):
    return rng.integers(-1, 2, size=(d_in, d_out)).astype(np.int8)


def test_hand_packed_bytes():
    col = np.array([[1], [-1], [0], [1], [-1]], np.int8)            # d_in = 5, d_out = 1
    p2 = pack_ternary(col, "2bit")
    # byte 0: 01 | 10 << 2 | 00 << 4 | 01 << 6 = 1 + 8 + 64 = 73; byte 1: -1 -> 10 then padding zeros = 2
    np.testing.assert_array_equal(p2.data[:, 0], [73, 2])
    p3 = pack_ternary(col, "base3")
    # digits W + 1 = [2, 0, 1, 2, 0]: 2 + 0 * 3 + 1 * 9 + 2 * 27 + 0 * 81 = 65
    np.testing.assert_array_equal(p3.data[:, 0], [65])


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
@pytest.mark.parametrize("d_in", [1, 4, 5, 13, 64])
def test_roundtrip_is_bit_exact(rng, fmt, d_in):
    codes = codes_of(rng, d_in, 7)
    p = pack_ternary(codes, fmt)
    out = unpack_ternary(p)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, codes)


def test_weight_bytes():
    codes = np.zeros((4000, 64), np.int8)
    f32 = codes.size * 4
    assert f32 / pack_ternary(codes, "2bit").data.nbytes == 16.0    # 2 bits per weight
    assert f32 / pack_ternary(codes, "base3").data.nbytes == 20.0   # 1.6 bits per weight


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
@pytest.mark.parametrize("M", [1, 3, 8])
def test_integer_product_is_exact(rng, fmt, M):
    codes = codes_of(rng, 103, 37)
    x = rng.integers(-128, 128, size=(M, 103)).astype(np.int8)
    acc = ternary_matmul_int(x, pack_ternary(codes, fmt))
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, x.astype(np.int64) @ codes.astype(np.int64))


@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_serial_and_parallel_kernels_agree(rng, monkeypatch, threads):
    import scratch_transformers.matmulfree.ternary_kernel as tk
    monkeypatch.setattr(tk, "_PARALLEL_MIN_LOOKUPS", 0 if threads == "parallel" else 1 << 62)
    codes = codes_of(rng, 301, 700)                                # 76 / 61 groups: not multiples of 4
    for M in (1, 3):                                                # M = 1 takes groups four at a time
        x = rng.integers(-128, 128, size=(M, 301)).astype(np.int8)
        for fmt in ("2bit", "base3"):
            np.testing.assert_array_equal(ternary_matmul_int(x, pack_ternary(codes, fmt)), x.astype(np.int64) @ codes)


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
def test_extreme_sums_exact(fmt):
    # every term +128: x = -128 against weights -1 (the largest sum, 128 d_in), and the smallest, -128 d_in
    d_in = 3001
    x = np.full((2, d_in), -128, np.int8)
    x[1] = 127
    codes = np.stack([-np.ones(d_in), np.ones(d_in)], axis=1).astype(np.int8)
    acc = ternary_matmul_int(x, pack_ternary(codes, fmt))
    np.testing.assert_array_equal(acc, [[128 * d_in, -128 * d_in], [-127 * d_in, 127 * d_in]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_output_equals_dequantised_product(rng, dtype):
    w = rng.standard_normal((50, 20)).astype(dtype)
    p = pack_weight(w, "base3")
    x_codes = rng.integers(-128, 128, size=(4, 50)).astype(np.int8)
    x_scale = rng.uniform(0.01, 1, size=(4, 1)).astype(dtype)
    y = ternary_linear(x_codes, x_scale, p)
    assert y.dtype == dtype
    gamma = np.mean(np.abs(w.astype(np.float64)))
    dense = (x_codes * x_scale.astype(np.float64)) @ (unpack_ternary(p) * gamma)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, dense, rtol=tol, atol=tol * np.max(np.abs(dense)))


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
def test_bitlinear_packed_equals_training_forward(rng, fmt):
    x = rng.standard_normal((2, 5, 33))
    w = 0.05 * rng.standard_normal((33, 12))
    nw = 1 + 0.1 * rng.standard_normal(33)
    want, _ = bitlinear_forward(x, w, nw)
    got = bitlinear_packed(x, pack_weight(w, fmt), nw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_bad_inputs(rng):
    with pytest.raises(ValueError, match="^codes: expected values < 2"):
        pack_ternary(np.full((3, 2), 2, np.int8))
    with pytest.raises(ValueError, match="^codes: expected an integer array"):
        pack_ternary(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="^fmt: expected one of"):
        pack_ternary(np.zeros((3, 2), np.int8), "1bit")
    p = pack_ternary(codes_of(rng, 8, 3))
    bad = p._replace(data=np.full_like(p.data, 0xFF))               # digit 11 is no ternary value
    with pytest.raises(ValueError, match="^packed.data: expected bytes of the 2bit format"):
        unpack_ternary(bad)
    p3 = pack_ternary(codes_of(rng, 10, 3), "base3")
    with pytest.raises(ValueError, match="^packed.data: expected bytes of the base3 format"):
        unpack_ternary(p3._replace(data=np.full_like(p3.data, 250)))
    with pytest.raises(ValueError, match="^packed.data: expected shape"):
        ternary_matmul_int(np.zeros((1, 8), np.int8), p._replace(d_in=9))
    with pytest.raises(ValueError, match="^packed: expected a PackedTernary"):
        ternary_matmul_int(np.zeros((1, 8), np.int8), tuple(p))
    with pytest.raises(ValueError, match="^x_codes: expected dtype int8"):
        ternary_matmul_int(np.zeros((1, 8), np.int16), p)
    with pytest.raises(ValueError, match="^x_codes: expected shape"):
        ternary_matmul_int(np.zeros((1, 7), np.int8), p)
    with pytest.raises(ValueError, match="^x: expected finite"):
        bitlinear_packed(np.full((1, 8), np.nan), p, np.ones(8))
    with pytest.raises(ValueError, match="^x: expected last axis 8"):
        bitlinear_packed(np.ones((1, 7)), p, np.ones(7))


def test_runs_without_jit(tmp_path):
    """NUMBA_DISABLE_JIT=1: the table builder and the accumulation loop run as plain Python."""
    code = (
        "import numpy as np, numba\n"
        "assert numba.config.DISABLE_JIT\n"
        "from scratch_transformers.matmulfree.ternary_kernel import pack_ternary, ternary_matmul_int\n"
        "rng = np.random.default_rng(5)\n"
        "codes = rng.integers(-1, 2, size=(11, 6)).astype(np.int8)\n"
        "x = rng.integers(-128, 128, size=(2, 11)).astype(np.int8)\n"
        "want = x.astype(np.int64) @ codes.astype(np.int64)\n"
        "import scratch_transformers.matmulfree.ternary_kernel as tk\n"
        "ok = True\n"
        "for lim in (0, 1 << 62):  # the parallel and the serial kernel\n"
        "    tk._PARALLEL_MIN_LOOKUPS = lim\n"
        "    ok &= all(np.array_equal(ternary_matmul_int(x, pack_ternary(codes, f)), want) for f in ('2bit', 'base3'))\n"
        "print(ok)\n"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "True"
