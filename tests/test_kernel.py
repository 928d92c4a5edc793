"""Fused conv-first block kernel (pallas_kernels) vs an independent jnp/numpy reference.

Runs the Pallas interpreter on the CPU. Each forward case writes into a NaN-poisoned,
input/output-aliased output buffer, so any pixel or channel the kernel forgets to write fails.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pallas_kernels import (LAUNCH_TABLE, BlockOptions, LaunchConfig, conv_first_block,
                            conv_first_block_reference, fused_forward, launch_config)
from kernel_cases import AXES, CASES, Case, random_block_inputs
from pallas_kernels.tuning import default_launch_config

A, L = "affine", "layernorm"


# --------------------------------------------------------------------------------------
# Independent reference: a numpy float64 implementation written separately from
# pallas_kernels.reference (explicit shifted-window loops, erf from math).
# --------------------------------------------------------------------------------------
def _np_act(name: str, h: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(h, 0.0)
    if name == "silu":
        return h / (1.0 + np.exp(-h))
    if name == "gelu":
        from math import erf, sqrt
        return 0.5 * h * (1.0 + np.vectorize(erf)(h / sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h ** 3)))
    raise AssertionError(name)


def numpy_block(x, p, *, k, gw, norm, act, eps, branch_scale=None):
    """float64 numpy conv-first block (same equation as the kernel docstring)."""
    x = np.asarray(x, np.float64)
    p = {n_: (None if v is None else np.asarray(v, np.float64)) for n_, v in p.items()}
    n, h, w, c = x.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros_like(x)
    groups = np.arange(c) // gw * gw
    for dy in range(k):
        for dx in range(k):
            win = xp[:, dy:dy + h, dx:dx + w, :]
            for i in range(gw):
                y += win[..., groups + i] * p["conv_w"][dy, dx, i]
    y += p["conv_b"]
    if norm == "layernorm":
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + eps)
    y = y * p["norm_scale"] + p["norm_shift"]
    z = _np_act(act, y @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    if p.get("layer_scale") is not None:
        z = z * p["layer_scale"]
    if branch_scale is not None:
        z = z * np.asarray(branch_scale, np.float64)[:, None, None, None]
    return x + z


def test_covering_design_covers():
    for axis, values in AXES.items():
        seen = {getattr(cs, axis) for cs in CASES}
        assert set(values) <= seen, (axis, set(values) - seen)
    for a, b in [("k", "c"), ("norm", "act"), ("dtype", "norm")]:
        seen = {(getattr(cs, a), getattr(cs, b)) for cs in CASES}
        missing = set(itertools.product(AXES[a], AXES[b])) - seen
        assert not missing, (a, b, missing)
    assert {cs.gw for cs in CASES} == {1, 8}
    assert any(cs.ls and cs.bs for cs in CASES) and any(not cs.ls for cs in CASES)


def _round_like(params, dtype):
    """Params rounded to ``dtype`` precision but kept float32 (exactly representable)."""
    return {n_: v.astype(dtype).astype(jnp.float32) for n_, v in params.items()}


# Tolerances, relative to the output scale s = max|reference|:
#   float32: the kernel and the float64 reference differ by f32 rounding and summation
#            order only (interpret mode: full-f32 dots; erf via A&S 7.1.26, |err| <= 1.5e-7)
#            -> 1e-5 * s (observed <= 5e-7 * s).
#   bfloat16/float16: inputs are pre-rounded, so the reference (float64 on those exact
#            values) differs from the kernel by three roundings: y -> dtype before the expand,
#            h -> dtype before the project (each <= 2^-9 relative per element for bf16,
#            propagated through unit-gain 1x1 layers with random-sign weights) and out ->
#            dtype (<= 2^-9 * s). Summing the three with 2x headroom for the extremes over
#            a few thousand elements gives 6 * 2^-9 * s ~= 1.2e-2 * s (observed <= 4e-3 * s);
#            float16 has 3 more mantissa bits -> 1.5e-3 * s (observed 4e-4 * s).
#            bfloat16 blocks also take the one-tanh activations (pallas_kernels/activations.py:
#            "gelu" with the logistic Phi, |dh| <= 1.42e-4 |x|; on the GPU tanh.approx adds
#            <= 2^-12 |x|): together < 2^-9 |x| / 5, inside the h -> dtype rounding term.
TOL = {"float32": 1e-5, "bfloat16": 6 * 2.0 ** -9, "float16": 6 * 2.0 ** -12}


def _check_forward(case: Case, seed: int) -> None:
    """The kernel (interpret mode, output pre-filled with NaN) against the float64 numpy block."""
    dtype = jnp.dtype(case.dtype)
    x, params, bs = random_block_inputs(
        seed, batch=case.n, height=case.hw[0], width=case.hw[1], channels=case.c,
        hidden=case.e * case.c, kernel_size=case.k, group_width=case.gw, dtype=dtype,
        layer_scale=case.ls, branch_scale=case.bs)
    params = _round_like(params, dtype)
    opts = BlockOptions(kernel_size=case.k, norm=case.norm, activation=case.act,
                        group_width=case.gw, eps=1e-6, interpret=True)
    poison = jnp.full(x.shape, jnp.nan, dtype)
    out = jax.jit(lambda x_, p_, b_, o_: fused_forward(x_, p_, opts, b_, out_init=o_))(
        x, params, bs, poison)
    assert out.dtype == dtype and out.shape == x.shape
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all(), "kernel left poisoned (unwritten) output elements"
    ref = numpy_block(np.asarray(x.astype(jnp.float32)), params, k=case.k, gw=case.gw,
                      norm=case.norm, act=case.act, eps=1e-6, branch_scale=bs)
    scale = np.abs(ref).max()
    err = np.abs(out - ref).max()
    assert err <= TOL[case.dtype] * scale, f"max err {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("case", CASES, ids=lambda cs: cs.id)
def test_forward_matches_reference(case: Case):
    _check_forward(case, seed=CASES.index(case))


def test_poisoned_output_catches_unwritten_tiles(monkeypatch):
    """Mutation check of the harness: a launch that skips the last tile leaves poison."""
    import types

    import pallas_kernels.fused_block as fused_block_module

    real = fused_block_module.pl
    short = types.SimpleNamespace(**{n_: getattr(real, n_) for n_ in dir(real)
                                     if not n_.startswith("__")})
    short.pallas_call = lambda kernel, *, grid, **kw: real.pallas_call(
        kernel, grid=(grid[0] - 1,), **kw)
    monkeypatch.setattr(fused_block_module, "pl", short)
    x, params, _ = random_block_inputs(0, batch=2, height=9, width=9, channels=16, hidden=32,
                                       kernel_size=3)
    tile = fused_block_module.block_launch_config(x.shape, x.dtype, params, 3, 1).tile
    rows = 2 * 9 * 9
    assert rows > tile, "the case must have more than one program"
    opts = BlockOptions(kernel_size=3, norm=A, activation="relu", interpret=True)
    out = np.asarray(fused_forward(x, params, opts, out_init=jnp.full(x.shape, jnp.nan)))
    flat = out.reshape(rows, 16)  # programs own consecutive rows of the flattened N*H*W pixels
    last = (rows - 1) // tile * tile
    assert np.isnan(flat[last:]).all() and np.isfinite(flat[:last]).all()


def test_reference_matches_numpy():
    """The jnp reference (used for the backward pass) agrees with the numpy one."""
    case = CASES[6]  # grouped conv, layer scale, branch scale
    x, params, bs = random_block_inputs(
        99, batch=case.n, height=case.hw[0], width=case.hw[1], channels=case.c,
        hidden=case.e * case.c, kernel_size=case.k, group_width=case.gw,
        layer_scale=True, branch_scale=True)
    for norm, act in [(A, "gelu"), (L, "silu")]:
        ref = conv_first_block_reference(x, params, kernel_size=case.k, norm=norm,
                                         activation=act, group_width=case.gw,
                                         branch_scale=bs)
        want = numpy_block(x, params, k=case.k, gw=case.gw, norm=norm, act=act, eps=1e-6,
                           branch_scale=bs)
        np.testing.assert_allclose(np.asarray(ref), want, rtol=0,
                                   atol=2e-5 * np.abs(want).max())


# --------------------------------------------------------------------------------------
# Public API: jit + grad + vmap through the custom_vjp.
# --------------------------------------------------------------------------------------
GRAD_CONFIGS = [
    dict(k=7, c=40, e=4, gw=1, norm=L, act="gelu", hw=(5, 6), n=2, ls=True, bs=True),
    dict(k=3, c=16, e=2, gw=8, norm=A, act="silu", hw=(4, 4), n=2, ls=False, bs=False),
]


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=lambda c: f"k{c['k']}-C{c['c']}-gw{c['gw']}")
def test_gradients_match_reference(cfg):
    x, params, bs = random_block_inputs(
        7, batch=cfg["n"], height=cfg["hw"][0], width=cfg["hw"][1], channels=cfg["c"],
        hidden=cfg["e"] * cfg["c"], kernel_size=cfg["k"], group_width=cfg["gw"],
        layer_scale=cfg["ls"], branch_scale=cfg["bs"])
    kw = dict(kernel_size=cfg["k"], norm=cfg["norm"], activation=cfg["act"],
              group_width=cfg["gw"])
    cot = jnp.asarray(np.random.default_rng(3).standard_normal(x.shape).astype(np.float32))

    def loss(block, x_, p_, b_):
        out = block(x_, p_, branch_scale=b_, **kw)
        return jnp.sum(out * cot), out

    argnums = (0, 1, 2) if cfg["bs"] else (0, 1)

    @jax.jit  # one compile for both sides
    def grads(x_, p_, b_):
        return tuple(jax.grad(functools.partial(loss, block), argnums, has_aux=True)(x_, p_, b_)
                     for block in (conv_first_block, conv_first_block_reference))

    (gk, out_k), (gr, out_r) = grads(x, params, bs)
    np.testing.assert_allclose(out_k, out_r, rtol=0, atol=2e-5 * np.abs(out_r).max())
    flat_k, tree_k = jax.tree.flatten(gk)
    flat_r, tree_r = jax.tree.flatten(gr)
    assert tree_k == tree_r
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(gk)[0]]
    assert len(flat_k) == (2 if cfg["bs"] else 1) + len(params)
    for name, a, b in zip(names, flat_k, flat_r):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max() + 1e-12,
                                   err_msg=name)


def test_vmap_of_value_and_grad():
    """vmap(value_and_grad) over an extra leading axis; interpret=None picks the
    interpreter on the CPU."""
    x, params, _ = random_block_inputs(5, batch=2, height=3, width=5, channels=24, hidden=48,
                                       kernel_size=3, layer_scale=True)
    xs = jnp.stack([x, -0.5 * x])
    kw = dict(kernel_size=3, norm=L, activation="gelu_tanh")

    def loss(block, x_):
        out = block(x_, params, **kw)
        return jnp.sum(jnp.sin(out)), out

    @jax.jit  # one compile for both sides
    def run(xs_):
        return tuple(jax.vmap(jax.value_and_grad(functools.partial(loss, block), has_aux=True))(
            xs_) for block in (conv_first_block, conv_first_block_reference))

    ((_, out), gx), ((_, out_r), gx_r) = run(xs)
    for i in range(2):
        want = numpy_block(xs[i], params, k=3, gw=1, norm=L, act="gelu_tanh", eps=1e-6)
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(out, out_r, rtol=0, atol=1e-5 * np.abs(out_r).max())
    np.testing.assert_allclose(gx, gx_r, rtol=1e-4, atol=1e-4 * np.abs(gx_r).max())


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (Triton path)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_forward_on_gpu(dtype):
    """Compiled Triton kernel vs numpy. f32 dots run in TF32 (10-bit mantissa, like XLA's
    default GPU precision), so f32 gets the bf16-style rounding budget with 2^-11 units."""
    case = Case(7, 96, 4, (14, 14), 3, L, "gelu", dtype, ls=True, bs=True)
    x, params, bs = random_block_inputs(11, batch=3, height=14, width=14, channels=96,
                                        hidden=384, kernel_size=7, dtype=jnp.dtype(dtype),
                                        layer_scale=True, branch_scale=True)
    params = _round_like(params, jnp.dtype(dtype))
    out = jax.jit(lambda x_, p_, b_: conv_first_block(
        x_, p_, kernel_size=7, norm=L, activation="gelu", branch_scale=b_))(x, params, bs)
    ref = numpy_block(np.asarray(x.astype(jnp.float32)), params, k=7, gw=1, norm=L,
                      act="gelu", eps=1e-6, branch_scale=bs)
    tol = 6 * 2.0 ** -11 if dtype == "float32" else TOL[dtype]
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref).max()
    assert err <= tol * np.abs(ref).max(), (case.id, err)


# --------------------------------------------------------------------------------------
# Bad inputs -> one clear ValueError.
# --------------------------------------------------------------------------------------
def _good():
    x, params, _ = random_block_inputs(0, batch=1, height=4, width=4, channels=16, hidden=32,
                                       kernel_size=3)
    return x, params, dict(kernel_size=3, norm=A, activation="relu")


def _with(params, **changes):
    out = dict(params)
    out.update(changes)
    return out


BAD = {
    "channels": (lambda x, p, kw: (jnp.zeros((1, 4, 4, 12)), p, kw), "multiple of 8"),
    "kernel_size": (lambda x, p, kw: (x, p, {**kw, "kernel_size": 9}), "kernel_size"),
    "even_kernel": (lambda x, p, kw: (x, p, {**kw, "kernel_size": 4}), "kernel_size"),
    "norm": (lambda x, p, kw: (x, p, {**kw, "norm": "batchnorm"}), "unknown norm"),
    "activation": (lambda x, p, kw: (x, p, {**kw, "activation": "tanh"}), "unknown activation"),
    "group_width": (lambda x, p, kw: (x, p, {**kw, "group_width": 4}), "group_width"),
    "int_dtype": (lambda x, p, kw: (x.astype(jnp.int32), p, kw), "floating"),
    "f64_dtype": (lambda x, p, kw: (np.zeros((1, 4, 4, 16), np.float64), p, kw), "float32"),
    "rank": (lambda x, p, kw: (x[0], p, kw), "4 dims"),
    "w1_shape": (lambda x, p, kw: (x, _with(p, w1=p["w1"][:8]), kw), "w1"),
    "conv_w_layout": (lambda x, p, kw: (x, _with(p, conv_w=p["conv_w"].reshape(3, 3, 16, 1)),
                                        kw), "conv_w"),
    "missing_param": (lambda x, p, kw: (x, {n_: v for n_, v in p.items() if n_ != "b2"}, kw),
                      "missing"),
    "unknown_param": (lambda x, p, kw: (x, _with(p, gamma=p["b2"]), kw), "unknown"),
    "layer_scale_shape": (lambda x, p, kw: (x, _with(p, layer_scale=p["b1"]), kw),
                          "layer_scale"),
    "branch_scale_shape": (lambda x, p, kw: (x, p, {**kw, "branch_scale": jnp.ones((3,))}),
                           "branch_scale"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_raise_value_error(name):
    make, fragment = BAD[name]
    x, params, kw = make(*_good())
    with pytest.raises(ValueError, match=fragment) as info:
        conv_first_block(x, params, **kw)
    assert str(info.value).startswith("conv_first_block: ")
    assert 'block_impl="xla"' in str(info.value)


def test_reference_accepts_what_the_kernel_rejects():
    """The reference has no tiling constraints (C=12, k=9, group width 4)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 5, 12)), jnp.float32)
    _, params, _ = random_block_inputs(0, batch=1, height=5, width=5, channels=12, hidden=24,
                                       kernel_size=9, group_width=4)
    out = conv_first_block_reference(x, params, kernel_size=9, norm=L, activation="relu",
                                     group_width=4)
    want = numpy_block(x, params, k=9, gw=4, norm=L, act="relu", eps=1e-6)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5 * np.abs(want).max())


# --------------------------------------------------------------------------------------
# Launch table.
# --------------------------------------------------------------------------------------
def test_launch_table_overrides_default(monkeypatch):
    key = (128, 5, 1, 512, "bfloat16")  # not in the shipped table
    assert key not in LAUNCH_TABLE
    default = launch_config(*key)
    assert default == default_launch_config(*key)
    tuned = LaunchConfig(tile=64, hidden_chunk=32, num_warps=8, num_stages=3)
    monkeypatch.setitem(LAUNCH_TABLE, key, tuned)
    assert launch_config(*key) is tuned
    assert launch_config(128, 5, 1, 512, "float32") == default_launch_config(
        128, 5, 1, 512, "float32")


@pytest.mark.parametrize("cp", [16, 32, 64, 128, 256, 512, 1024, 2048])
def test_default_rule_respects_triton_limits(cp):
    for gw, hidden, dtype in itertools.product((1, 8), (4 * cp, 16, 24),
                                               ("float32", "bfloat16")):
        lc = default_launch_config(cp, 7, gw, hidden, dtype)
        for v in (lc.tile, lc.hidden_chunk):
            assert v >= 16 and v & (v - 1) == 0
        assert lc.tile * cp <= 8192 or lc.tile == 16
        chunk_bytes = 2 * cp * lc.hidden_chunk * jnp.dtype(dtype).itemsize
        if chunk_bytes <= 32 * 1024:
            assert lc.num_stages == 2
        else:
            assert lc.hidden_chunk == 16 and lc.num_stages == 1
        assert lc.hidden_chunk <= max(16, hidden * 2)  # no more than one chunk of padding


def test_launch_config_rejects_bad_values():
    with pytest.raises(ValueError, match="power of two"):
        LaunchConfig(tile=24, hidden_chunk=32)
    with pytest.raises(ValueError, match="num_warps"):
        LaunchConfig(tile=32, hidden_chunk=32, num_warps=3)


def test_reference_is_plain_xla():
    """Sanity: the reference lowers to one grouped convolution (no Pallas)."""
    x, params, _ = random_block_inputs(0, batch=1, height=4, width=4, channels=16, hidden=32,
                                       kernel_size=3, group_width=8)
    jaxpr = jax.make_jaxpr(lambda x_: conv_first_block_reference(
        x_, params, kernel_size=3, norm=A, activation="relu", group_width=8))(x)
    prims = {e.primitive for e in jaxpr.jaxpr.eqns}
    assert lax.conv_general_dilated_p in prims
    assert not any("pallas" in p.name for p in prims)


# --------------------------------------------------------------------------------------
# Empty inputs: N, H or W = 0 give the empty result (forward and gradient), like the reference.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 4, 4, 16), (2, 0, 4, 16), (2, 4, 0, 16)],
                         ids=["N0", "H0", "W0"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_empty_inputs(shape, dtype):
    _, params, _ = random_block_inputs(0, batch=1, height=1, width=1, channels=16, hidden=32,
                                       kernel_size=3)
    x = jnp.zeros(shape, dtype)
    bs = jnp.ones((shape[0],), jnp.float32)
    kw = dict(kernel_size=3, norm=L, activation="gelu")
    out = conv_first_block(x, params, branch_scale=bs, **kw)
    ref = conv_first_block_reference(x, params, branch_scale=bs, **kw)
    assert out.shape == ref.shape == shape and out.dtype == ref.dtype == jnp.dtype(dtype)

    def loss(x_, p_, b_):
        return jnp.sum(conv_first_block(x_, p_, branch_scale=b_, **kw).astype(jnp.float32))

    gx, gp, gb = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, params, bs)
    assert gx.shape == shape and gx.dtype == x.dtype and gb.shape == bs.shape
    for name, g in gp.items():
        assert g.shape == params[name].shape, name
        np.testing.assert_array_equal(g, 0.0, err_msg=name)


def test_small_inputs_get_smaller_tiles():
    """Batch-1 sized calls shrink the tile so the grid has >= MIN_PROGRAMS programs."""
    from pallas_kernels import tuning

    big = launch_config(64, 7, 1, 256, "bfloat16")
    assert launch_config(64, 7, 1, 256, "bfloat16", rows=10 ** 7) == big
    small = launch_config(64, 7, 1, 256, "bfloat16", rows=56 * 56)
    # the hidden chunk may halve for hidden parts (test_hidden_parts_rule)
    assert small.tile < big.tile and small.hidden_chunk <= big.hidden_chunk
    assert -(-56 * 56 // small.tile) >= tuning.MIN_PROGRAMS
    assert launch_config(512, 3, 1, 2048, "bfloat16", rows=49).tile == 16  # floor: dot minimum


@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[9]], ids=lambda cs: cs.id)
def test_forward_with_tiles_spanning_images(monkeypatch, case):
    """Large tiles over small images: one program covers several images and a partial tile
    (the launch rule would shrink these tiles; MIN_PROGRAMS = 1 keeps them)."""
    from pallas_kernels import tuning

    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    dtype = jnp.dtype(case.dtype)
    x, params, bs = random_block_inputs(
        40, batch=case.n, height=case.hw[0], width=case.hw[1], channels=case.c,
        hidden=case.e * case.c, kernel_size=case.k, group_width=case.gw, dtype=dtype,
        layer_scale=case.ls, branch_scale=case.bs)
    params = _round_like(params, dtype)
    key = (tuning.padded_channels(case.c), case.k, case.gw, case.e * case.c, case.dtype)
    monkeypatch.setitem(LAUNCH_TABLE, key, LaunchConfig(tile=128, hidden_chunk=32))
    rows = case.n * case.hw[0] * case.hw[1]
    assert rows > case.hw[0] * case.hw[1] and rows % 128, "tiles must span images, one partial"
    opts = BlockOptions(kernel_size=case.k, norm=case.norm, activation=case.act,
                        group_width=case.gw, eps=1e-6, interpret=True)
    out = jax.jit(lambda x_, p_, b_, o_: fused_forward(x_, p_, opts, b_, out_init=o_))(
        x, params, bs, jnp.full(x.shape, jnp.nan, dtype))
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all()
    ref = numpy_block(np.asarray(x.astype(jnp.float32)), params, k=case.k, gw=case.gw,
                      norm=case.norm, act=case.act, eps=1e-6, branch_scale=bs)
    assert np.abs(out - ref).max() <= TOL[case.dtype] * np.abs(ref).max()


MODE_CASES = [  # the 16-bit conv paths (pallas_kernels.conv_stage.CONV_MODES)
    ("paired", Case(7, 32, 4, (9, 11), 2, L, "gelu", "bfloat16", ls=True, bs=True)),
    ("paired", Case(3, 64, 4, (6, 5), 3, A, "silu", "bfloat16")),
    ("blockdiag", Case(5, 40, 2, (7, 9), 2, A, "silu", "float16", gw=8, bs=True)),
    ("blockdiag", Case(7, 32, 4, (9, 6), 2, L, "gelu", "bfloat16", gw=8, ls=True)),
]


@pytest.mark.parametrize("mode,case", MODE_CASES, ids=lambda v: v if isinstance(v, str)
                         else v.id)
def test_forward_16bit_conv_paths(mode, case):
    from pallas_kernels.conv_stage import conv_mode

    assert conv_mode(jnp.dtype(case.dtype), case.c, case.gw) == mode
    _check_forward(case, seed=77)





# --------------------------------------------------------------------------------------
# The split plan (pallas_kernels.split_block): conv + norm kernel, then the fused MLP kernel
# or the expand and project GEMMs.
# --------------------------------------------------------------------------------------
SPLIT_CASES = [  # forced on small blocks (SPLIT_MIN_CHANNELS = 16): every conv mode
    Case(3, 32, 4, (5, 6), 2, L, "gelu", "float32", ls=True, bs=True),  # direct
    Case(7, 64, 4, (9, 11), 2, A, "silu", "bfloat16"),  # paired, uint32 pair stores
    Case(5, 32, 4, (4, 7), 3, L, "gelu_tanh", "bfloat16", gw=8, ls=True, bs=True),  # blockdiag
    Case(3, 40, 2, (6, 6), 2, L, "relu", "float16", ls=True),  # padded channels (Cp = 64)
]


def _force_split(monkeypatch, case: Case, fused_mlp: bool, **launch) -> None:
    """The split plan for ``case`` with the fused MLP kernel or the two GEMMs (a table row:
    the default rule's parameters with ``fused_mlp`` and ``launch`` replaced; any grid
    size keeps the fused MLP kernel)."""
    import dataclasses

    from pallas_kernels import block_kernel_count, tuning

    monkeypatch.setattr(tuning, "SPLIT_MIN_CHANNELS", 16)
    monkeypatch.setattr(tuning, "MLP_MIN_PROGRAMS", 1)
    key = (tuning.padded_channels(case.c), case.k, case.gw, case.e * case.c, case.dtype)
    lc = dataclasses.replace(tuning.default_split_launch_config(*key), fused_mlp=fused_mlp,
                             **launch)
    monkeypatch.setitem(tuning.SPLIT_LAUNCH_TABLE, key, lc)
    rows = case.n * case.hw[0] * case.hw[1]
    assert block_kernel_count(case.c, case.k, case.gw, case.e * case.c, case.dtype,
                              rows=rows) == (2 if fused_mlp else 3)


@pytest.mark.parametrize("fused_mlp", [False, True], ids=["gemms", "fused_mlp"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda cs: cs.id)
def test_split_plan_matches_reference(monkeypatch, case, fused_mlp):
    _force_split(monkeypatch, case, fused_mlp)
    _check_forward(case, seed=50 + SPLIT_CASES.index(case))


@pytest.mark.parametrize("expand_split,column_split", [(4, 2), (2, 4)])
def test_split_plan_with_column_split_accumulators(monkeypatch, expand_split, column_split):
    """GEMM programs with several accumulators (expand 4 x 16 columns and project 2 x 32, or
    2 x 32 and 4 x 16 as the default rule's project) and tiles spanning images
    (MIN_PROGRAMS = 1 keeps the table's tiles)."""
    from pallas_kernels import tuning

    case = Case(7, 64, 4, (9, 11), 2, A, "silu", "bfloat16", ls=True, bs=True)
    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    _force_split(monkeypatch, case, False, conv_tile=32, block_m=64, block_n=64,
                 column_split=column_split, expand_block_n=64, expand_split=expand_split,
                 block_k=16)
    _check_forward(case, seed=61)


@pytest.mark.parametrize("case,conv_tile,groups", [
    (Case(7, 64, 4, (5, 14), 1, L, "gelu", "bfloat16", ls=True, bs=True), 32, (14, 2)),  # paired
    (Case(5, 40, 2, (6, 6), 3, A, "silu", "float32"), 32, (6, 4)),  # direct, Cp = 64
    (Case(7, 32, 4, (7, 7), 3, A, "silu", "float16", bs=True), 16, (7, 2)),
    (Case(7, 32, 2, (3, 20), 1, L, "gelu", "bfloat16"), 64, (10, 4)),  # half rows
], ids=lambda v: v.id if isinstance(v, Case) else str(v))
def test_split_conv_norm_row_groups(monkeypatch, case, conv_tile, groups):
    """The split plan's conv + norm kernel for k >= 5 takes G row groups of M pixels (M a
    divisor of W, not a power of two here; whole image rows, static column masks, in the
    first three; the last program partial: 70 / 28, 108 / 24, 147 / 14 and 60 / 40
    pixels) and stores y one group member at a time."""
    from pallas_kernels import conv_stage, split_block, tuning

    assert tuning.uses_row_groups(case.k, case.gw)
    assert conv_stage.row_groups(case.hw[1], conv_tile) == groups
    rows = case.n * case.hw[0] * case.hw[1]
    assert rows % split_block.conv_norm_pixels(case.hw[1], conv_tile, case.k, case.gw) != 0
    traced = []

    def spy(*args, m_block, **kw):
        traced.append(m_block)
        return conv_stage.conv_norm_row_groups(*args, m_block=m_block, **kw)

    monkeypatch.setattr(split_block, "conv_norm_row_groups", spy)
    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    _force_split(monkeypatch, case, True, conv_tile=conv_tile)
    _check_forward(case, seed=63)
    assert traced and set(traced) == {groups[0]}, traced


def test_row_groups_rule():
    """M: the largest divisor of W up to min(MAX_ROW_GROUP, tile / 2); G: the largest power
    of two with G M <= tile; column groups stay for k = 3 and grouped convs."""
    from pallas_kernels import conv_stage, tuning

    assert conv_stage.row_groups(14, 128) == (14, 8)  # C256 14x14: whole rows
    assert conv_stage.row_groups(7, 32) == (7, 4)
    assert conv_stage.row_groups(56, 128) == (14, 8)
    assert conv_stage.row_groups(17, 64) == (1, 64)  # a prime width > 16: no reuse
    assert conv_stage.row_groups(1, 16) == (1, 16)
    assert conv_stage.row_groups(6, 8) == (3, 2)  # M <= tile / 2
    assert not tuning.uses_row_groups(3, 1) and not tuning.uses_row_groups(7, 8)


@pytest.mark.parametrize("case,blocks", [
    (Case(3, 64, 4, (5, 7), 2, A, "silu", "bfloat16", gw=8, bs=True), 2),  # 4 parts -> 2 x 2
    (Case(7, 64, 2, (4, 9), 3, A, "gelu", "float16", gw=8, ls=True), 4),  # 1 part per program
    (Case(3, 32, 4, (5, 6), 2, A, "silu", "bfloat16", gw=8), 8),  # capped at the 2 parts
], ids=lambda v: v.id if isinstance(v, Case) else f"blocks{v}")
def test_split_plan_conv_channel_blocks(monkeypatch, case, blocks):
    """The conv + norm kernel with its 16-channel parts over a second grid axis (blockdiag
    grouped conv, affine norm): the same block as the float64 reference."""
    from pallas_kernels import split_block, tuning
    from pallas_kernels.conv_stage import conv_mode

    assert conv_mode(case.dtype, case.c, case.gw) == "blockdiag"
    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    _force_split(monkeypatch, case, False, conv_channel_blocks=blocks)
    seen = []
    real = split_block.conv_channel_blocks
    monkeypatch.setattr(split_block, "conv_channel_blocks",
                        lambda *a: seen.append(real(*a)) or seen[-1])
    _check_forward(case, seed=63)
    assert seen and seen[0] == min(blocks, tuning.padded_channels(case.c) // 16)


def test_conv_channel_blocks_need_affine_blockdiag():
    from pallas_kernels import split_block
    from pallas_kernels.tuning import SplitLaunchConfig

    lc = SplitLaunchConfig(conv_tile=16, conv_channel_blocks=4)
    assert split_block.conv_channel_blocks(lc, "bfloat16", 8, "affine", 32) == 4  # blockdiag
    assert split_block.conv_channel_blocks(lc, "bfloat16", 8, "layernorm", 32) == 1
    assert split_block.conv_channel_blocks(lc, "bfloat16", 1, "affine", 2) == 1  # paired
    assert split_block.conv_channel_blocks(lc, "float32", 8, "affine", 32) == 1  # direct
    with pytest.raises(ValueError, match="conv_channel_blocks"):
        SplitLaunchConfig(conv_tile=16, conv_channel_blocks=3)


@pytest.mark.parametrize("case,mlp_split", [
    (Case(7, 64, 4, (9, 11), 2, A, "silu", "bfloat16", ls=True, bs=True), 4),  # 198 rows
    (Case(3, 40, 4, (5, 7), 3, L, "gelu", "float32", ls=True), 2),  # Cp = 64, 105 rows
    (Case(5, 32, 2, (4, 7), 3, A, "gelu_tanh", "float16", bs=True), 1),  # 84 rows
], ids=lambda v: v.id if isinstance(v, Case) else f"split{v}")
def test_split_plan_fused_mlp_programs_span_images(monkeypatch, case, mlp_split):
    """The fused MLP kernel with 32-pixel programs spanning images (the last one partial),
    16-wide hidden chunks and its project accumulator in ``mlp_split`` column blocks of 16
    or more (MIN_PROGRAMS = 1 keeps the table's tiles)."""
    from pallas_kernels import tuning

    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    _force_split(monkeypatch, case, True, conv_tile=16, mlp_block_m=32, hidden_chunk=16,
                 mlp_warps=4, mlp_stages=3, mlp_split=mlp_split)
    _check_forward(case, seed=62)


def _check_api_against_references(case: Case, seed: int, cot_seed: int) -> tuple:
    """Forward and gradient of the public API (as configured by the caller's monkeypatch)
    against the float64 numpy block and the XLA reference block (the backward pass is the
    XLA recompute); returns (kernel output, jitted forward, inputs) for further checks."""
    x, params, bs = random_block_inputs(seed, batch=case.n, height=case.hw[0],
                                        width=case.hw[1], channels=case.c,
                                        hidden=case.e * case.c, kernel_size=case.k,
                                        layer_scale=True, branch_scale=True)
    kw = dict(kernel_size=case.k, norm=case.norm, activation=case.act)
    cot = jnp.asarray(np.random.default_rng(cot_seed).standard_normal(x.shape).astype(
        np.float32))

    def loss(block, x_, p_, b_):
        out = block(x_, p_, branch_scale=b_, **kw)
        return jnp.sum(out * cot), out

    @jax.jit
    def grads(x_, p_, b_):
        return tuple(jax.grad(functools.partial(loss, block), (0, 1, 2), has_aux=True)(
            x_, p_, b_) for block in (conv_first_block, conv_first_block_reference))

    (gk, out_k), (gr, out_r) = grads(x, params, bs)
    want = numpy_block(np.asarray(x), params, k=case.k, gw=1, norm=case.norm, act=case.act,
                       eps=1e-6, branch_scale=bs)
    np.testing.assert_allclose(out_k, want, rtol=0, atol=2e-5 * np.abs(want).max())
    np.testing.assert_allclose(out_k, out_r, rtol=0, atol=2e-5 * np.abs(out_r).max())
    for a, b in zip(jax.tree.leaves(gk), jax.tree.leaves(gr)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max() + 1e-12)
    forward = jax.jit(lambda x_, p_, b_: conv_first_block(x_, p_, branch_scale=b_, **kw))
    return out_k, forward, (x, params, bs)


def test_split_plan_fused_mlp_gradients(monkeypatch):
    """Forward and gradient of the public API with the fused MLP kernel against the
    reference (the backward pass is the XLA recompute)."""
    case = Case(3, 32, 4, (5, 6), 2, L, "gelu", "float32", ls=True, bs=True)
    _force_split(monkeypatch, case, True)
    _check_api_against_references(case, seed=8, cot_seed=4)


def test_wide_blocks_take_the_split_plan(monkeypatch):
    """The default rule: depthwise from 256 padded channels, grouped from 512; with the fused
    MLP kernel (2 kernels) at 256 padded channels in 16-bit dtypes for calls with enough
    pixels, else the GEMMs (3); calls too small for the split plan the fused kernel with
    hidden parts (1). A C = 256 block through the hidden parts and the fused MLP kernel
    against the float64 reference (programs span both images)."""
    from pallas_kernels import block_kernel_count, tuning

    assert [block_kernel_count(c, 7, gw, 4 * c, "bfloat16") for c, gw in
            [(128, 1), (256, 1), (320, 1), (256, 8), (512, 8)]] == [1, 2, 3, 1, 3]
    assert block_kernel_count(256, 3, 1, 1024, "float32") == 3
    assert block_kernel_count(256, 3, 1, 1024, "bfloat16", rows=128 * 196) == 2
    assert block_kernel_count(256, 3, 1, 1024, "bfloat16", rows=16 * 196) == 3
    # batch 1: the fused kernel with hidden parts (tuning.split_small_call)
    assert block_kernel_count(256, 3, 1, 1024, "bfloat16", rows=196) == 1
    case = Case(3, 256, 4, (3, 5), 2, L, "gelu", "bfloat16", ls=True, bs=True)
    _check_forward(case, seed=60)  # 30 pixels: the fused kernel with hidden parts
    monkeypatch.setattr(tuning, "MLP_MIN_PROGRAMS", 1)
    assert block_kernel_count(256, 3, 1, 1024, "bfloat16", rows=30) == 2
    _check_forward(case, seed=60)  # the default rule's fused MLP kernel


def test_split_launch_rule():
    from pallas_kernels.tuning import (GEMM_WIDE_ROWS, MIN_PROGRAMS, MLP_MIN_PROGRAMS,
                                       SplitLaunchConfig, gemm_block_n, split_launch_config)

    big = split_launch_config(512, 3, 1, 2048, "bfloat16", rows=128 * 49)
    assert big == split_launch_config(512, 3, 1, 2048, "bfloat16")  # batch 128: no shrinking
    assert big.conv_tile * 512 <= 8192 and big.block_m == 128 and not big.fused_mlp
    # k >= 5 depthwise (row groups): four times the conv tile, 8 warps; C512 64 -> 32 for
    # MIN_PROGRAMS (6272 / 64 = 98 programs)
    k7 = split_launch_config(512, 7, 1, 2048, "bfloat16", rows=128 * 49)
    assert (k7.conv_tile, k7.conv_warps) == (32, 8)
    k7 = split_launch_config(256, 7, 1, 1024, "bfloat16", rows=128 * 196)
    assert (k7.conv_tile, k7.conv_warps) == (128, 8)
    # expand (bfloat16): 49 x 8 programs of 256 columns; float16 / float32 keep 128 (49 x 16);
    # project: 256 columns in 4 accumulators, 49 x 2 programs (GEMM_WIDE_ROWS: big calls are
    # L2-bound, halving the columns re-reads the hidden activations)
    assert gemm_block_n(big.expand_block_n, big.block_m, 128 * 49, 2048) == 256
    assert (big.block_n, big.column_split) == (256, 4)
    f32 = split_launch_config(512, 3, 1, 2048, "float32", rows=128 * 49)  # shared memory
    assert (f32.block_n, f32.column_split) == (128, 1)
    for dtype in ("float16", "float32"):
        assert split_launch_config(512, 3, 1, 2048, dtype).expand_block_n == 128
    # 16-bit grouped convs: 32-pixel conv + norm programs at 4 warps (float32: 16 at 8)
    g8 = split_launch_config(512, 7, 8, 2048, "bfloat16", rows=128 * 49)
    assert (g8.conv_tile, g8.conv_warps) == (32, 4)
    g8 = split_launch_config(512, 3, 8, 2048, "float32", rows=128 * 49)
    assert (g8.conv_tile, g8.conv_warps) == (16, 8)
    g8 = split_launch_config(512, 7, 8, 2048, "bfloat16", rows=49)  # batch 1: under one wave
    assert (g8.conv_tile, g8.conv_warps) == (16, 8)
    # ... with the affine norm: 128 pixels x 32 channels per program (16 channel blocks);
    # batch 1: 16-pixel tiles, 4 x 16 = 64 programs
    g8 = split_launch_config(512, 7, 8, 2048, "bfloat16", rows=128 * 49, norm="affine")
    assert (g8.conv_tile, g8.conv_warps, g8.conv_channel_blocks) == (128, 4, 16)
    g8 = split_launch_config(512, 7, 8, 2048, "bfloat16", rows=49, norm="affine")
    assert (g8.conv_tile, g8.conv_channel_blocks) == (16, 16)
    for norm, dtype in (("layernorm", "bfloat16"), ("affine", "float32")):
        assert split_launch_config(512, 7, 8, 2048, dtype, norm=norm).conv_channel_blocks == 1
    assert gemm_block_n(big.block_n, big.block_m, 128 * 49, 512) == 256
    assert gemm_block_n(big.block_n, big.block_m, 64 * 49, 512) == 256  # 3136 rows: 50 programs
    assert 32 * 49 < GEMM_WIDE_ROWS <= 64 * 49
    assert gemm_block_n(big.block_n, big.block_m, 32 * 49, 512) == 32  # halved: 13 x 16 programs
    assert gemm_block_n(big.block_n, big.block_m, 128 * 196, 256) == 256  # C256 14x14
    one = split_launch_config(512, 3, 1, 2048, "bfloat16", rows=49)  # batch 1
    assert one.block_m == 64 and one.conv_tile == 16
    # halved towards MIN_PROGRAMS, not below 32: 2048 / 32 = 64 and 512 / 32 = 16 programs
    assert gemm_block_n(one.block_n, one.block_m, 49, 2048) == 32
    assert gemm_block_n(one.block_n, one.block_m, 49, 512) == 32
    assert gemm_block_n(128, 128, 10 ** 6, 64) == 64  # capped at the width
    # the fused MLP kernel: C256 14x14 batch 128 -> 196 programs of 128 pixels; batch 64 ->
    # 98 < MLP_MIN_PROGRAMS, so the GEMMs (halved fused-MLP programs re-read the weights)
    c256 = split_launch_config(256, 3, 1, 1024, "bfloat16", rows=128 * 196)
    assert c256.fused_mlp and c256.mlp_block_m == 128 and -(-128 * 196 // 128) >= MIN_PROGRAMS
    assert c256.mlp_block_m * 256 <= 32768  # the project accumulator's register budget
    half = split_launch_config(256, 3, 1, 1024, "bfloat16", rows=64 * 196)
    assert not half.fused_mlp and half.mlp_block_m == 128
    small = split_launch_config(256, 3, 1, 1024, "bfloat16", rows=8 * 196)
    assert -(-8 * 196 // 64) < MLP_MIN_PROGRAMS and not small.fused_mlp
    assert small.mlp_block_m == c256.mlp_block_m
    assert not split_launch_config(256, 3, 1, 1024, "float32", rows=128 * 196).fused_mlp
    bad = [(dict(conv_tile=24), "power of two"), (dict(column_split=3), "column_split"),
           (dict(num_warps=3), "num_warps"), (dict(hidden_chunk=48), "hidden_chunk"),
           (dict(mlp_warps=3), "mlp_warps"), (dict(mlp_stages=0), "mlp_stages"),
           (dict(mlp_split=3), "mlp_split")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            SplitLaunchConfig(**{"conv_tile": 16, **kwargs})


def test_eager_calls_trace_the_kernel_once(monkeypatch):
    """Un-jitted calls with the same shapes and options trace (and compile) the kernel once."""
    from pallas_kernels import fused_block

    traces = []
    real = fused_block._flat_forward

    def counting(*flat, **kw):
        traces.append(kw["opts"])
        return real(*flat, **kw)

    monkeypatch.setattr(fused_block, "_flat_forward", counting)
    fused_block._jitted_flat_forward.cache_clear()
    x, params, _ = random_block_inputs(3, batch=1, height=4, width=4, channels=8, hidden=32,
                                       kernel_size=3)
    call = functools.partial(conv_first_block, kernel_size=3, norm="layernorm",
                             activation="gelu")
    first, second = call(x, params), call(x, params)
    fused_block._jitted_flat_forward.cache_clear()  # drop the entries holding the wrapper
    assert len(traces) == 1
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


# --------------------------------------------------------------------------------------
# The depthwise conv stage's column groups (pallas_kernels.conv_stage.column_block): each
# kernel row's inputs are loaded once per group of M consecutive output pixels. Forced
# 64 / 128 / 256-pixel tiles over widths divisible by 8 / 4 / 2 so every M, partial tiles,
# tiles spanning images, and the paired and direct paths in every dtype are covered.
# --------------------------------------------------------------------------------------
COLUMN_CASES = [  # (case, M, tile)
    (Case(7, 64, 4, (8, 8), 3, A, "silu", "bfloat16"), 8, 128),  # paired, partial tile
    (Case(7, 32, 4, (6, 16), 2, L, "gelu", "bfloat16", ls=True, bs=True), 8, 128),  # paired
    (Case(3, 64, 2, (5, 12), 3, L, "gelu", "bfloat16", ls=True), 4, 128),  # paired, k3
    (Case(5, 40, 2, (9, 8), 2, L, "relu", "float16", ls=True), 8, 128),  # direct, Cp = 64
    (Case(7, 16, 2, (7, 6), 3, A, "gelu_tanh", "float32", bs=True), 2, 128),  # direct f32
    (Case(3, 8, 4, (12, 4), 3, L, "silu", "float32"), 4, 128),  # direct f32, W = M
    (Case(7, 64, 4, (8, 16), 3, A, "silu", "bfloat16"), 8, 256),  # 32 rows per group
    (Case(5, 32, 2, (4, 28), 2, L, "gelu", "bfloat16", ls=True), 4, 64),  # W = 28
]


@pytest.mark.parametrize("case,m,tile", COLUMN_CASES,
                         ids=[f"{cs.id}-M{m}-tile{t}" for cs, m, t in COLUMN_CASES])
def test_conv_column_groups_match_reference(monkeypatch, case, m, tile):
    from pallas_kernels import tuning
    from pallas_kernels.conv_stage import column_block

    assert column_block(case.hw[1], tile, case.k, case.gw) == m
    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)
    key = (tuning.padded_channels(case.c), case.k, case.gw, case.e * case.c, case.dtype)
    monkeypatch.setitem(LAUNCH_TABLE, key, LaunchConfig(tile=tile, hidden_chunk=32))
    _check_forward(case, seed=90 + COLUMN_CASES.index((case, m, tile)))


def test_column_block_rule():
    from pallas_kernels.conv_stage import MIN_GROUP_ROWS, column_block, interleave_rows

    assert column_block(56, 128, 7, 1) == 8 and column_block(28, 64, 7, 1) == 4
    assert column_block(7, 128, 7, 1) == 1 and column_block(14, 128, 3, 1) == 2
    assert column_block(56, 128, 7, 8) == 1  # grouped convs keep one load per tap
    assert column_block(56, 2 * MIN_GROUP_ROWS, 7, 1) == 2  # >= MIN_GROUP_ROWS rows per group
    parts = [jnp.arange(12).reshape(3, 4) + 100 * j for j in range(4)]
    out = np.asarray(interleave_rows(parts))
    for j in range(4):
        np.testing.assert_array_equal(out[j::4], np.asarray(parts[j]))


@pytest.mark.parametrize("k,gw", [(3, 1), (7, 1), (3, 8)])
def test_conv_loop_trips_match_the_lowered_kernel(k, gw):
    """The static model charges the conv loop conv_loop_trips(k, gw) times: the Triton module
    (lowered for cuda on this CPU) has that loop before the MLP loop, or none when it is 1."""
    import re

    from convfirst_jax.bench import static
    from pallas_kernels.conv_stage import conv_loop_trips

    cfg = static.parse_config(f"C=64,HW=16,k={k},gw={gw},N=2")
    ((ttir, _),) = static.export_triton_modules(cfg)
    defs = dict(re.findall(r"(%\w+) = (.*)", ttir))
    trips = []
    for bound in re.findall(r"scf\.for %\w+ = %\w+ to (%\w+) step", ttir):
        m = re.fullmatch(r"arith\.(?:constant (\d+)|addi %c0_i32\w*, %c(\d+)_i32\w*) : i32",
                         defs[bound].strip())
        trips.append(int(m.group(1) or m.group(2)))
    expected = conv_loop_trips(k, gw)
    assert len(trips) == (1 if expected == 1 else 2)  # [conv loop,] MLP loop over chunks
    if expected > 1:
        assert trips[0] == expected


# --------------------------------------------------------------------------------------
# Small calls: the hidden dim split over a second grid axis (LaunchConfig.hidden_parts),
# f32 partial projections summed in a fixed order and the epilogue after the kernel.
# --------------------------------------------------------------------------------------
def test_hidden_parts_rule():
    """Batch 1 of the brief's blocks gets hidden parts until the grid has
    HIDDEN_PARTS_MIN_WARPS warps (or every part has MIN_PART_CHUNKS chunks of 16) where
    they pay (tuning.parts_pay: fewer tiles than SMs, k^2 gw <= 0.2 Cp); batch-128 calls
    and the table rows keep one part."""
    from pallas_kernels import tuning
    from pallas_kernels.tuning import (HIDDEN_PARTS_MIN_WARPS, MIN_PART_CHUNKS, block_plan,
                                       hidden_parts, parts_pay, split_small_call)

    # (cp, hw, gw, k) -> parts at batch 1: C64 56 x 56 has 196 tiles (>= 132 SMs); C128 k7
    # (49 / 128) and every gw8 block (>= 72 / 256) recompute too much conv per part
    wanted = {(64, 56, 1, 3): 1, (64, 56, 1, 7): 1, (64, 56, 8, 3): 1, (64, 56, 8, 7): 1,
              (128, 28, 1, 3): 16, (128, 28, 1, 7): 1, (128, 28, 8, 3): 1, (128, 28, 8, 7): 1,
              (256, 14, 8, 3): 1, (256, 14, 8, 7): 1, (256, 14, 1, 3): 32, (256, 14, 1, 7): 32,
              (512, 7, 1, 3): 64, (512, 7, 1, 7): 64}
    for (cp, hw, gw, k), want in wanted.items():
        lc = launch_config(cp, k, gw, 4 * cp, "bfloat16", rows=hw * hw)
        assert lc.tile == 16 and lc.hidden_parts == want, (cp, k, gw, lc)
        assert parts_pay(-(-hw * hw // 16), cp, k, gw) == (want > 1)
        programs = -(-hw * hw // 16) * lc.hidden_parts
        chunks = -(-4 * cp // lc.hidden_chunk)
        assert want == 1 or (programs * lc.num_warps >= HIDDEN_PARTS_MIN_WARPS
                             or chunks == MIN_PART_CHUNKS * lc.hidden_parts), (cp, k, gw, lc)
        assert chunks >= MIN_PART_CHUNKS * lc.hidden_parts
        big = launch_config(cp, k, gw, 4 * cp, "bfloat16", rows=128 * hw * hw)
        assert big.hidden_parts == 1
        if (cp, k, gw, 4 * cp, "bfloat16") in LAUNCH_TABLE:
            assert big == LAUNCH_TABLE[(cp, k, gw, 4 * cp, "bfloat16")]
    assert launch_config(64, 3, 1, 256, "bfloat16", rows=2 * 56 * 56).hidden_parts == 1
    assert hidden_parts(196, 256, 64, 8) == (4, 32)  # C64 56 x 56: 4 parts of 2 chunks
    assert hidden_parts(196, 256, 64, 4) == (8, 16)  # 4 warps: twice the programs
    assert hidden_parts(600, 256, 64, 8) == (1, 64)  # enough tiles
    assert hidden_parts(4, 32, 64, 8) == (1, 16)  # 2 chunks of 16: one part
    assert launch_config(128, 3, 1, 512, "bfloat16").hidden_parts == 1  # no rows: large
    # wide depthwise blocks: batch 1 takes the fused kernel, grouped ones keep the split plan
    assert split_small_call(196) and split_small_call(49) and not split_small_call(None)
    assert not split_small_call(128 * 49) and not split_small_call(16 * tuning.MIN_PROGRAMS)
    assert block_plan(256, 3, 1, 1024, "bfloat16", rows=196) == "fused"
    assert block_plan(512, 7, 1, 2048, "bfloat16", rows=49) == "fused"
    assert block_plan(512, 7, 8, 2048, "bfloat16", rows=49) == "split"
    assert block_plan(512, 7, 1, 2048, "bfloat16", rows=128 * 49) == "split"
    with pytest.raises(ValueError, match="hidden_parts"):
        LaunchConfig(tile=16, hidden_chunk=16, hidden_parts=3)


PARTS_CASES = [  # (case, G): forced hidden parts over every conv mode, padding and scale
    (Case(3, 40, 4, (14, 14), 3, L, "silu", "bfloat16", ls=True), 4),  # Cp 64, 37 tiles
    (Case(7, 64, 4, (7, 9), 1, A, "silu", "bfloat16", bs=True), 4),  # paired conv
    (Case(5, 32, 4, (4, 7), 3, L, "gelu_tanh", "float16", gw=8, ls=True, bs=True), 2),
    (Case(3, 96, 4, (7, 9), 2, L, "gelu", "float32", ls=True, bs=True), 8),  # Cp 128
    (Case(7, 16, 4, (5, 6), 3, A, "relu", "float32", gw=8), 2),  # direct grouped
]


def _force_parts(monkeypatch, case: Case, parts: int) -> None:
    """The small-call rule with HIDDEN_PARTS_MIN_WARPS set so that ``case`` gets ``parts``
    hidden parts (16-pixel tiles: MIN_PROGRAMS above the tile count)."""
    from pallas_kernels import tuning
    from pallas_kernels.fused_block import block_launch_config

    rows = case.n * case.hw[0] * case.hw[1]
    tiles = -(-rows // 16)
    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 10 ** 6)
    monkeypatch.setattr(tuning, "PARTS_MAX_TILES", 10 ** 6)  # parts even where they do not pay
    monkeypatch.setattr(tuning, "PARTS_MAX_CONV_RATIO", float("inf"))
    x = jax.ShapeDtypeStruct((case.n, *case.hw, case.c), jnp.dtype(case.dtype))
    params = {"w1": jnp.zeros((case.c, case.e * case.c))}
    warps = block_launch_config(x.shape, x.dtype, params, case.k, case.gw).num_warps
    monkeypatch.setattr(tuning, "HIDDEN_PARTS_MIN_WARPS", tiles * parts * warps)
    lc = block_launch_config(x.shape, x.dtype, params, case.k, case.gw)
    assert lc.tile == 16 and lc.hidden_parts == parts, lc


@pytest.mark.parametrize("case,parts", PARTS_CASES,
                         ids=[f"{cs.id}-G{g}" for cs, g in PARTS_CASES])
def test_hidden_parts_match_reference(monkeypatch, case, parts):
    _force_parts(monkeypatch, case, parts)
    _check_forward(case, seed=110 + PARTS_CASES.index((case, parts)))


def test_hidden_parts_poison_catches_unwritten_parts(monkeypatch):
    """Mutation check: a launch that skips the last hidden part leaves NaN partials, so the
    output is poisoned everywhere (every pixel sums every part)."""
    import types

    import pallas_kernels.fused_block as fused_block_module

    case = Case(3, 40, 4, (7, 9), 1, A, "relu", "float32")
    _force_parts(monkeypatch, case, 2)
    real = fused_block_module.pl
    short = types.SimpleNamespace(**{n_: getattr(real, n_) for n_ in dir(real)
                                     if not n_.startswith("__")})
    short.pallas_call = lambda kernel, *, grid, **kw: real.pallas_call(
        kernel, grid=(grid[0], grid[1] - 1), **kw)
    monkeypatch.setattr(fused_block_module, "pl", short)
    x, params, _ = random_block_inputs(0, batch=1, height=7, width=9, channels=40, hidden=160,
                                       kernel_size=3)
    opts = BlockOptions(kernel_size=3, norm=A, activation="relu", interpret=True)
    out = np.asarray(fused_forward(x, params, opts, out_init=jnp.full(x.shape, jnp.nan)))
    assert np.isnan(out).all()


def test_hidden_parts_deterministic_and_gradients(monkeypatch):
    """Forward (bitwise equal over two calls: fixed-order sums, no atomics) and gradients of
    the public API with hidden parts against the float64 reference and the XLA block."""
    case = Case(3, 32, 4, (5, 6), 2, L, "gelu", "float32", ls=True, bs=True)
    _force_parts(monkeypatch, case, 4)
    out_k, forward, inputs = _check_api_against_references(case, seed=9, cot_seed=5)
    np.testing.assert_array_equal(np.asarray(forward(*inputs)), np.asarray(out_k))



# --------------------------------------------------------------------------------------
# Grouped convs step over chunks of taps of a kernel row (pallas_kernels.conv_stage.
# tap_chunk): k >= 5 takes G = 2 taps per step, the last chunk of a row padded with a
# zero-weight, masked tap; blockdiag dots are (tile, 16 G) @ (16 G, 16).
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [5, 7])
def test_grouped_conv_loop_trips_match_the_lowered_kernel(k):
    from pallas_kernels.conv_stage import conv_loop_trips, tap_chunk

    assert tap_chunk(3) == 1 and tap_chunk(k) == 2
    assert conv_loop_trips(k, 8) == k * ((k + 1) // 2)
    test_conv_loop_trips_match_the_lowered_kernel(k, 8)


TAP_CHUNK_CASES = [
    Case(7, 16, 2, (6, 9), 2, A, "silu", "float32", gw=8, bs=True),  # direct, padded tap
    Case(7, 40, 2, (8, 7), 2, L, "gelu", "bfloat16", gw=8, ls=True),  # blockdiag, Cp = 64
    Case(5, 32, 2, (5, 5), 3, A, "relu", "float16", gw=8),  # blockdiag, 3 chunks per row
]


@pytest.mark.parametrize("case", TAP_CHUNK_CASES, ids=lambda cs: cs.id)
def test_grouped_conv_tap_chunks_match_reference(case):
    _check_forward(case, seed=120 + TAP_CHUNK_CASES.index(case))


# --------------------------------------------------------------------------------------
# The bfloat16 GELUs return twice the activation and the kernels halve w2
# (pallas_kernels.activations.kernel_hidden_scale): the block's output must be bit for bit
# the one of the plain form (activation / 2, w2 as is), on the fused kernel, the split plan's
# fused MLP kernel and its GEMMs.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,hw,k,act,kernels", [
    (64, (6, 8), 3, "gelu", 1), (32, (5, 6), 7, "gelu_tanh", 1),
    (256, (5, 7), 7, "gelu", 2), (512, (3, 7), 3, "gelu", 3),
], ids=["fused-gelu", "fused-gelu_tanh", "split-mlp", "split-gemms"])
def test_doubled_bf16_gelu_changes_no_bit(monkeypatch, c, hw, k, act, kernels):
    from pallas_kernels import activations, block_kernel_count, tuning

    monkeypatch.setattr(tuning, "MIN_PROGRAMS", 1)  # the split plan at these small sizes
    monkeypatch.setattr(tuning, "MLP_MIN_PROGRAMS", 1)
    n = 1
    assert block_kernel_count(c, k, 1, 4 * c, jnp.bfloat16, rows=n * hw[0] * hw[1]) == kernels
    x, params, _ = random_block_inputs(7, batch=n, height=hw[0], width=hw[1], channels=c,
                                       hidden=4 * c, kernel_size=k, dtype=jnp.bfloat16)

    def run():  # a fresh jit each time: the patched activation is traced
        return np.asarray(jax.jit(lambda x_, p_: conv_first_block(
            x_, p_, kernel_size=k, norm="layernorm", activation=act, interpret=True))(
                x, params).astype(jnp.float32))

    doubled = run()
    assert activations.kernel_hidden_scale(act, jnp.bfloat16) == 2.0
    form, _ = activations.BF16_KERNEL_ACTIVATIONS[act]
    monkeypatch.setitem(activations.BF16_KERNEL_ACTIVATIONS, act,
                        (lambda v, tanh: 0.5 * form(v, tanh), 1.0))
    assert activations.kernel_hidden_scale(act, jnp.bfloat16) == 1.0
    plain = run()
    np.testing.assert_array_equal(doubled, plain)
