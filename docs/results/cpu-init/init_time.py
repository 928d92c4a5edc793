"""Time to build a model: eager ``create_model`` vs the same call under ``nnx.jit`` (CPU).

Run: python docs/results/cpu-init/init_time.py [model] [repeats]
Each measurement runs in a fresh process (compile caches are per process), so the time
includes the first compile, which a user pays once per run; the median of ``repeats`` runs
is printed per mode.
"""
import json
import statistics
import subprocess
import sys

CHILD = r'''
import sys, time, jax
from flax import nnx
from convfirst_jax import create_model
name, mode = sys.argv[1], sys.argv[2]
build = lambda: create_model(name, num_classes=10, seed=0)
t = time.perf_counter()
model = build() if mode == "eager" else nnx.jit(build)()
jax.block_until_ready(nnx.state(model))
print(time.perf_counter() - t)
'''


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "convfirst_atto"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    import jax
    out = {"model": name, "jax": jax.__version__, "device": jax.devices()[0].device_kind,
           "repeats": repeats}
    for mode in ("eager", "jit"):
        runs = [float(subprocess.run([sys.executable, "-c", CHILD, name, mode], check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
                for _ in range(repeats)]
        out[mode] = {"median_s": round(statistics.median(runs), 2),
                     "runs_s": [round(r, 2) for r in runs]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
