"""Dense-conv gradients in isolation on the CPU: the library conv's autodiff against four
ways of writing its kernel gradient (forward and input gradient stay the library conv's).

    python scripts/kernel_grad_isolation.py --out docs/results/cpu-imagenette-64px/kernel_grad_isolation.md

Variants of dW[dy, dx] = sum over pixels of x_pad(dy, dx) * g:
  autodiff  jax.grad of lax.conv_general_dilated (XLA: a conv with an Ho x Wo window);
  taps      one 2-d matmul per tap on the strided slice;
  im2col    all taps' slices concatenated, one matmul;
  cpu_paths what the models use (cpu_paths.conv_matmul_kernel_grad: taps);
  rowflat   (stride 1) the kernel rows sliced, the columns shifted as contiguous row ranges
            of a width-padded layout (the cotangent zero-padded to W + k - 1 columns);
  flat      (stride 1) the padded input flattened, every tap a contiguous row range.
Times: median ms of jit(grad) over 15 calls, medians of 3 interleaved rounds; batch 64.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from convfirst_jax.models.cpu_paths import conv_matmul_kernel_grad  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
#: (name, x shape, kernel shape, stride, pad, gradient also w.r.t. x)
CASES = [("ResNet-18 stem 7x7/2, 3 -> 64, 64 px", (64, 64, 64, 3), (7, 7, 3, 64), 2, 3, False),
         ("patchify stem 4x4/4, 3 -> 40, 64 px", (64, 64, 64, 3), (4, 4, 3, 40), 4, 0, False),
         ("3x3 64 -> 64 at 16x16", (64, 16, 16, 64), (3, 3, 64, 64), 1, 1, True),
         ("3x3 128 -> 128 at 8x8", (64, 8, 8, 128), (3, 3, 128, 128), 1, 1, True)]


def _conv(x, w, s, p):
    return lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=DN)


def _pad(x, p):
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def _dot_t(a, b):
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def dw_taps(x, g, kh, kw, s, p):
    xp = _pad(x, p)
    n, ho, wo, o = g.shape
    taps = [_dot_t(xp[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s].reshape(
        -1, x.shape[-1]), g.reshape(-1, o)) for dy in range(kh) for dx in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, x.shape[-1], o)


def dw_im2col(x, g, kh, kw, s, p):
    xp = _pad(x, p)
    n, ho, wo, o = g.shape
    cols = [xp[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
            for dy in range(kh) for dx in range(kw)]
    return _dot_t(jnp.concatenate(cols, -1).reshape(n * ho * wo, -1),
                  g.reshape(-1, o)).reshape(kh, kw, x.shape[-1], o)


def dw_rowflat(x, g, kh, kw, s, p):
    xp = _pad(x, p)
    n, hp, wp, cin = xp.shape
    _, ho, wo, o = g.shape
    gp = jnp.pad(g, ((0, 0), (0, 0), (0, wp - wo), (0, 0))).reshape(n * ho * wp, o)
    length = n * ho * wp - (kw - 1)
    taps = []
    for dy in range(kh):
        a = xp[:, dy:dy + ho].reshape(n * ho * wp, cin)
        taps += [_dot_t(a[dx:dx + length], gp[:length]) for dx in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, o)


def dw_flat(x, g, kh, kw, s, p):
    xp = _pad(x, p)
    n, hp, wp, cin = xp.shape
    _, ho, wo, o = g.shape
    xf = xp.reshape(n * hp * wp, cin)
    gp = jnp.pad(g, ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(n * hp * wp, o)
    length = n * hp * wp - ((kh - 1) * wp + (kw - 1))
    taps = [_dot_t(xf[dy * wp + dx:dy * wp + dx + length], gp[:length])
            for dy in range(kh) for dx in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, o)


def _with_kernel_grad(dw_fn, s, p):
    @jax.custom_vjp
    def f(x, w):
        return _conv(x, w, s, p)

    def bwd(res, g):
        x, w = res
        _, vjp = jax.vjp(lambda v: _conv(v, w, s, p), x)
        return vjp(g)[0], dw_fn(x, g, w.shape[0], w.shape[1], s, p)

    f.defvjp(lambda x, w: (_conv(x, w, s, p), (x, w)), bwd)
    return f


def _median_ms(f, *a, reps=15):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    names = ["autodiff", "taps", "im2col", "rowflat", "flat", "cpu_paths"]
    lines = [f"# Dense-conv kernel gradient in isolation "
             f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"jax {jax.__version__}, {os.cpu_count()} CPUs, float32, batch 64; ms per "
             "jit(grad) call (w only for the stems, x and w for the 3x3 layers).",
             f"Command: `python scripts/kernel_grad_isolation.py {' '.join(sys.argv[1:])}`", "",
             "| conv | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, xs, ws, s, p, wrt_x in CASES:
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ws) * 0.05, jnp.float32)
        convs = {"autodiff": lambda x, w: _conv(x, w, s, p),
                 "taps": _with_kernel_grad(dw_taps, s, p),
                 "im2col": _with_kernel_grad(dw_im2col, s, p),
                 "cpu_paths": lambda x, w: conv_matmul_kernel_grad(x, w, (s, s),
                                                                   ((p, p), (p, p)))}
        if s == 1:
            convs["rowflat"] = _with_kernel_grad(dw_rowflat, s, p)
            convs["flat"] = _with_kernel_grad(dw_flat, s, p)
        argnums = (0, 1) if wrt_x else (1,)
        grads = {v: jax.jit(jax.grad(lambda x, w, c=c: jnp.sum(c(x, w) ** 2), argnums=argnums))
                 for v, c in convs.items()}
        ref = grads["autodiff"](x, w)
        for v, f in grads.items():  # every variant computes the same gradient
            for a, b in zip(f(x, w), ref):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3,
                                           atol=2e-3 * float(jnp.abs(b).max()))
        times = {v: [] for v in grads}
        for _ in range(args.rounds):
            for v, f in grads.items():
                times[v].append(_median_ms(f, x, w))
        cells = [f"{np.median(times[v]):.1f}" if v in times else "-" for v in names]
        row = f"| {name} | " + " | ".join(cells) + " |"
        print(row, flush=True)
        lines.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
