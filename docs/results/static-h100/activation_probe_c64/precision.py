"""Error of cheaper GELU forms after the bf16 rounding of h (numpy emulation, CPU only).

Run: python docs/results/static-h100/activation_probe_c64/precision.py
h = GELU(x) is rounded to bfloat16 before the project GEMM in the 16-bit kernels, so a
cheaper activation is only visible if its error shows through that rounding.
"""
from math import erf, sqrt

import ml_dtypes
import numpy as np

x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 2
xe = x.astype(np.float64)
exact = 0.5 * xe * (1 + np.vectorize(erf)(xe / sqrt(2)))


def bf16(v):
    return np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def f16(v):
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float64)


u = xe * (0.7988 + 0.03528 * xe * xe)  # Phi(x) ~ sigmoid(1.5976 x + 0.07056 x^3) (Bowling 2009)
half_x = f16(0.5 * f16(xe))
forms = {
    "exact GELU in f32 (today)": bf16(exact),
    "logistic Phi, f32": bf16(0.5 * xe * (1 + np.tanh(u))),
    "logistic Phi, f16 arithmetic and tanh": bf16(f16(half_x + f16(half_x * f16(np.tanh(f16(u)))))),
    "tanh GELU, f32": bf16(0.5 * xe * (1 + np.tanh(sqrt(2 / np.pi) * (xe + 0.044715 * xe ** 3)))),
}
scale = np.abs(exact).max()
print("form | max |err| / max |h| | rms err | mean err")
for name, value in forms.items():
    err = value - exact
    print(f"{name} | {np.abs(err).max() / scale:.2e} | {np.sqrt((err ** 2).mean()):.2e} | "
          f"{err.mean():+.1e}")
