"""``python -m train`` with a tiny 1-conv BatchNorm model: fast command-line runs for tests.

    python tests/tiny_cli.py --config configs/default.py --workdir DIR --config.KEY=VALUE ...

Same command line, exit codes and workdir as ``python -m train``; only the model differs
(:class:`TinyNet`, compiles in about a second). Test knobs (environment variables):
``TINY_STEP_SLEEP`` seconds of sleep before each train step (to kill a run at a chosen moment),
``TINY_IGNORE_SIGXFSZ=1`` turns a file-size limit (``prlimit``) into write errors (EFBIG)
instead of killing the process, as a full disk would.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


_TINY_NET = None


def tiny_net_class():
    """The TinyNet class, built on first use: this file is also imported by every grain worker
    process (as ``__mp_main__``), which should not pay for importing jax and flax."""
    global _TINY_NET
    if _TINY_NET is None:
        import jax.numpy as jnp
        from flax import nnx

        class TinyNet(nnx.Module):
            """conv 3x3 / 2 -> BatchNorm -> ReLU -> mean pool -> linear."""

            def __init__(self, num_classes: int, dtype, param_dtype, rngs: nnx.Rngs,
                         width: int = 8):
                self.conv = nnx.Conv(3, width, (3, 3), strides=2, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs)
                self.bn = nnx.BatchNorm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                self.head = nnx.Linear(width, num_classes, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs)

            def __call__(self, x):
                x = nnx.relu(self.bn(self.conv(x)))
                return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)

        _TINY_NET = TinyNet
    return _TINY_NET


def tiny_factory(name, *, num_classes, block_impl, dtype, param_dtype, drop_path, seed):
    """Stand-in for ``convfirst_jax.create_model``; ``name`` "convnext*" gives 16 channels (another
    parameter tree, as a different model would have)."""
    from flax import nnx

    del block_impl, drop_path
    width = 16 if str(name).startswith("convnext") else 8
    return tiny_net_class()(num_classes, dtype, param_dtype, nnx.Rngs(seed), width=width)


def nan_loss_at(nan_step: int):
    """``train.state.train_step`` whose reported loss at step ``nan_step`` is NaN (the update
    itself is the real one): the divergence tests' fault, injected from outside the package.
    Install it with ``monkeypatch.setattr(train.state, "train_step", nan_loss_at(5))``."""
    import jax.numpy as jnp

    from train import state as state_lib

    real_step = state_lib.train_step

    def train_step(state, batch, **kwargs):
        new_state, metrics = real_step(state, batch, **kwargs)
        loss = jnp.where(state.step + 1 == nan_step, jnp.nan, metrics["loss"])
        return new_state, {**metrics, "loss": loss}

    return train_step


def main() -> int:
    import convfirst_jax
    from train import run_summary, steps
    from train.__main__ import main as train_main

    convfirst_jax.create_model = tiny_factory
    run_summary.analytic_complexity = lambda *a, **k: {
        "macs_per_image": None, "forward_flops_per_image": None, "complexity_params": None}
    sleep = float(os.environ.get("TINY_STEP_SLEEP", "0"))
    if sleep > 0:
        to_global = steps.to_global

        def slow(batch, sharding):
            time.sleep(sleep)
            return to_global(batch, sharding)

        steps.to_global = slow
    if os.environ.get("TINY_IGNORE_SIGXFSZ") == "1":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return train_main(sys.argv[1:])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
