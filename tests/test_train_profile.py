"""The train-step profile: op names to JAX operations and phases, the sums, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convfirst_jax.bench import train_profile as tp

HLO = """\
%fused_computation.7 (param_0: f32[8,4]) -> f32[4,8] {
  %param_0 = f32[8,4]{1,0} parameter(0)
  ROOT %transpose.1 = f32[4,8]{1,0} transpose(%param_0), dimensions={1,0}, metadata={op_name="jit(train_step)/inner"}
}

ENTRY %main (p: f32[8,4]) -> f32[4,8] {
  %p = f32[8,4]{1,0} parameter(0)
  %transpose_copy_fusion.3 = f32[4,8]{1,0} fusion(%p), kind=kLoop, calls=%fused_computation.7, metadata={op_name="jit(train_step)/transpose(jvp(ric,rjc->cij))/dot_general" stack_frame_id=4}
  %ynn_fusion.12 = f32[8,8]{1,0} fusion(%p), kind=kCustom, metadata={op_name="jit(train_step)/jvp()/dot_general"}
  ROOT %multiply_add_fusion = f32[4,8]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(train_step)/add"}
}
"""


@pytest.mark.parametrize("op_name, expected", [
    ("jit(train_step)/transpose(jvp(ric,rjc->cij))/dot_general",
     ("backward", "ric,rjc->cij dot_general")),
    ("jit(train_step)/jvp()/mul", ("forward", "mul")),
    ("jit(train_step)/transpose(jvp())/reshape", ("backward", "reshape")),
    ("jit(train_step)/jvp(jit(_pad))/pad", ("forward", "_pad pad")),
    ("jit(train_step)/add", ("update", "add")),
    ("", ("?", "?")),
])
def test_phase_and_source(op_name, expected):
    assert tp.phase_and_source(op_name) == expected


def test_metadata_and_attribution_sum_every_event_once():
    meta = tp.hlo_op_metadata(HLO)
    assert meta["transpose_copy_fusion.3"] == (
        "f32[4,8]{1,0}", "jit(train_step)/transpose(jvp(ric,rjc->cij))/dot_general")
    assert meta["multiply_add_fusion"][1] == "jit(train_step)/add"
    events = [  # two steps: two threads share the transpose, one ynn dot, one unknown op
        {"name": "transpose_copy_fusion.3", "ts": 0, "dur": 300, "tid": 1},
        {"name": "transpose_copy_fusion.3", "ts": 0, "dur": 100, "tid": 2},
        {"name": "ynn_fusion.12", "ts": 400, "dur": 500, "tid": 1},
        {"name": "multiply_add_fusion", "ts": 900, "dur": 50, "tid": 1},
        {"name": "wrapped_is-finite.2", "ts": 950, "dur": 50, "tid": 2},
        {"name": "ynn_fusion.12", "ts": 1000, "dur": 700, "tid": 1},
    ]
    rows = tp.attribute(events, meta, steps=2)
    assert [(r["kind"], r["phase"], r["source"]) for r in rows] == [
        ("ynn_fusion", "forward", "dot_general"),
        ("transpose_copy_fusion", "backward", "ric,rjc->cij dot_general"),
        ("multiply_add_fusion", "update", "add"),
        ("wrapped_is-finite", "?", "?")]
    assert rows[0]["ms_per_step"] == pytest.approx(1200 / 2 / 1e3)
    assert rows[1]["ms_per_step"] == pytest.approx(400 / 2 / 1e3)
    assert rows[1]["shape"] == "f32[4,8]{1,0}" and rows[1]["ops"] == 1
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["ms_per_step"] for r in rows) == pytest.approx(1700 / 2 / 1e3)


def test_busy_union_matches_a_timeline_count():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 1000, 40)
    durs = rng.integers(1, 80, 40)
    events = [{"ts": int(a), "dur": int(d)} for a, d in zip(starts, durs)]
    timeline = np.zeros(1200, bool)
    for a, d in zip(starts, durs):
        timeline[a:a + d] = True
    assert tp.busy_union_us(events) == timeline.sum()
    assert tp.busy_union_us([]) == 0.0


def test_op_events_drop_runtime_bookkeeping():
    trace = {"traceEvents": [
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 5, "ts": 0},
        {"ph": "X", "name": "$train_compare.py:81 run", "dur": 5, "ts": 0},
        {"ph": "X", "name": "ynn_fusion.3", "dur": 5, "ts": 0},
        {"ph": "M", "name": "thread_name", "ts": 0},
        {"ph": "X", "name": "dot.2", "dur": 0, "ts": 0},
    ]}
    assert [e["name"] for e in tp.op_events(trace)] == ["ynn_fusion.3"]


def test_command_profiles_a_small_step(tmp_path, capsys):
    """The whole command on a tiny step: files written, the op table adds up, dots found."""
    assert tp.main(["--models", "convfirst_atto", "--batch-size", "2", "--resolution", "32",
                    "--steps", "1", "--top", "5", "--out", str(tmp_path)]) == 0
    prof = json.loads((tmp_path / "train_profile_convfirst_atto.json").read_text())["profile"]
    rows = prof["rows"]
    assert {"forward", "backward", "update"} <= {r["phase"] for r in rows}
    assert sum(r["ms_per_step"] for r in rows) == pytest.approx(prof["op_ms_per_step"])
    assert sum(prof["phase_ms_per_step"].values()) == pytest.approx(prof["op_ms_per_step"])
    assert any("dot_general" in r["source"] for r in rows if r["phase"] == "forward")
    assert prof["busy_ms_per_step"] <= prof["profiled_span_ms_per_step"] + 1e-6
    md = (tmp_path / "train_profile_convfirst_atto.md").read_text()
    assert "| 5 |" in md and "| 6 |" not in md and "more rows" in md
    assert "train-profile --models convfirst_atto" in md and "machine check" in md
    assert len(prof["machine_matmul_gflops"]) == 2 and min(prof["machine_matmul_gflops"]) > 0


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tp.main(["--out", str(tmp_path), "--steps", "0"])
    assert "--steps: 0 is not positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tp.main(["--out", str(tmp_path), "--resolution", "16"])
    assert "use at least 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tp.main(["--out", str(tmp_path), "--models", "convnext_nano9"])
    assert "invalid choice" in capsys.readouterr().err
