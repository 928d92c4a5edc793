"""convfirst_jax.host_memory: XLA:CPU's per-execution temp block from one reused heap.

The page-fault test runs fresh processes (the setting must precede JAX's CPU client): a
jitted step with a 256 MiB temp block and a small donated state, called repeatedly,
page-faults that block afresh on every call under glibc's default malloc, and not at all
once the heap has settled (a few calls) with the reused heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from convfirst_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[2])
from convfirst_jax import host_memory
status = host_memory.reuse_host_memory() if sys.argv[1] == "on" else host_memory.status()
import jax, jax.numpy as jnp

def step(state, x):  # like a train step: a small donated state and a big temp block
    y = jnp.sin(x * state[0])
    z = (y - y.mean(0)) * jnp.cos(x).mean(1, keepdims=True)
    return state + z.mean(1)[:state.shape[0]]

x = jnp.ones((2048, 16384), jnp.float32)
state = jnp.ones((1024,), jnp.float32)
compiled = jax.jit(step, donate_argnums=0).lower(state, x).compile()
per_call = []
for _ in range(16):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state = compiled(state, x)
    state.block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"status": status, "faults": per_call[6:],
                  "temp": compiled.memory_analysis().temp_size_in_bytes}))
"""


def _child(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != host_memory.OPT_OUT_ENV}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, REPO], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt only")
def test_reused_heap_stops_the_per_call_page_faults():
    on, off = _child("on"), _child("off")
    assert on["status"].startswith("on:"), on["status"]
    assert off["status"].startswith("off: not set"), off["status"]
    pages = on["temp"] / 4096
    assert on["temp"] >= 128 * 2**20, on["temp"]  # far above a thread arena's 64 MiB heap
    # glibc's default: a fresh mmap of the temp block per call, every page faulted again
    assert min(off["faults"]) > 0.5 * pages, (off, pages)
    # the reused heap: while it settles into a layout that fits the temp block and the
    # buffers still in flight, a call may grow it; after that, no faults
    assert sorted(on["faults"])[len(on["faults"]) // 2] < 0.01 * pages, (on, pages)


def test_refuses_once_jax_has_started(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # this process's CPU client exists now
    monkeypatch.setattr(host_memory, "_status", None)
    monkeypatch.delenv(host_memory.OPT_OUT_ENV, raising=False)
    calls = []
    monkeypatch.setattr(host_memory, "_glibc", lambda: type(
        "LibC", (), {"mallopt": staticmethod(lambda *a: calls.append(a) or 1)})())
    msg = host_memory.reuse_host_memory()
    assert msg.startswith("off: JAX's CPU client already exists"), msg
    assert "before the first JAX computation" in msg
    assert not calls  # nothing changed
    assert host_memory.status().startswith("off: not set")


def test_opt_out_and_other_c_libraries(monkeypatch):
    monkeypatch.setattr(host_memory, "_status", None)
    monkeypatch.setenv(host_memory.OPT_OUT_ENV, "system")
    assert host_memory.reuse_host_memory() == (
        f"off: {host_memory.OPT_OUT_ENV}=system (glibc's default malloc)")
    assert host_memory.status() == host_memory.reuse_host_memory()  # the first answer stays
    monkeypatch.setattr(host_memory, "_status", None)
    monkeypatch.delenv(host_memory.OPT_OUT_ENV)
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.reuse_host_memory() == "off: not glibc on Linux (nothing to change)"
