"""Serving export: artifact runs in a fresh process with jax only; BN folded; CUDA has Triton.

The CPU artifact is loaded and run by a separate Python process that imports only jax and
numpy (checked: neither convfirst_jax, train nor flax gets imported there) and compared with
the restored model in eval mode. Tolerance: relative max error 1e-5, as tests/test_folding.py
(folding BN reorders float32 arithmetic: measured ~2e-6).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fixtures.runs import make_run  # noqa: E402

from convfirst_jax import export as export_lib  # noqa: E402
from convfirst_jax.models.norms import BatchNorm  # noqa: E402
from model_fill import random_model  # noqa: E402
from pallas_kernels import block_kernel_count  # noqa: E402
from convfirst_jax.specs import ResNetSpec, get_spec  # noqa: E402
from convfirst_jax.weights.run import load_run  # noqa: E402
from train import data  # noqa: E402

RTOL = 1e-5

SERVE = """
import sys, numpy as np, jax
exp = jax.export.deserialize(open(sys.argv[1], "rb").read())
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exp.call(x)))
leaked = [m for m in sys.modules if m.split(".")[0] in ("convfirst_jax", "train", "flax")]
assert not leaked, leaked
print("platforms", exp.platforms, "in", exp.in_avals, "out", exp.out_avals)
"""


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = data.ensure_synthetic_dataset(tmp_path_factory.mktemp("exportdata"), num_classes=3,
                                      train_per_class=1, val_per_class=1, image_size=40)
    wd = tmp_path_factory.mktemp("run")
    make_run(wd, model="convfirst_atto", data_dir=d, classes=data.class_names(d))
    return wd


def test_cpu_artifact_runs_in_fresh_process(run, tmp_path):
    out = tmp_path / "serve"
    assert export_lib.main(["--workdir", str(run), "--out", str(out), "--batch-size", "2"]) == 0
    info = json.loads((out / "serving.json").read_text())
    assert info["input"] == {"shape": [2, 32, 32, 3], "dtype": "float32", "layout": "NHWC",
                             "batch": "fixed"}
    assert info["output"]["shape"] == [2, 3] and info["platforms"] == ["cpu"]
    assert info["classes"] == json.loads((run / "classes.json").read_text())
    assert info["batchnorm"].startswith("folded")
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", SERVE, str(out / "model.jaxexport"),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "y.npy")
    model = load_run(run).model
    want = np.asarray(jax.jit(lambda a: model(a))(x))
    assert got.shape == (2, 3) and _rel_err(got, want) < RTOL
    # Every BN folded away: ConvFirst has no LayerNorm, so any rsqrt would be a BatchNorm.
    text = jax.export.deserialize((out / "model.jaxexport").read_bytes()).mlir_module()
    assert "rsqrt" not in text


def test_resnet_batchnorm_folding_equals_eval_mode():
    # Bottleneck blocks with projection shortcuts at width 8: every conv/BN pairing, fast.
    model = random_model(ResNetSpec("resnet_w8", "bottleneck", (1, 2, 1, 1), width=8),
                         num_classes=5, seed=2)
    model.eval()
    assert any(isinstance(m, BatchNorm) for _, m in nnx.iter_graph(model))
    before = np.asarray(model.conv1.kernel[...]).copy()
    folded = export_lib.fold_resnet_batchnorm(model)
    assert not any(isinstance(m, BatchNorm) for _, m in nnx.iter_graph(folded))
    np.testing.assert_array_equal(model.conv1.kernel[...], before)   # the input is untouched
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    want = jax.jit(lambda a: model(a))(x)
    got = jax.jit(lambda a: folded(a))(x)
    assert _rel_err(got, want) < RTOL


def _export_cuda_pallas(model, batch_size: int):
    """``export_model`` for cuda with the fused kernel, at 32 px; skips where Triton cannot lower."""
    try:
        return export_lib.export_model(model, batch_size=batch_size, image_size=32,
                                       platforms=("cuda",), block_impl="pallas")
    except RuntimeError as e:
        if "Triton compilation handler" in str(e):
            pytest.skip("this jaxlib compiles Triton at lowering time and has no CUDA compiler")
        raise


def test_cuda_pallas_export_contains_the_triton_kernel(run):
    model = load_run(run, block_impl="pallas").model
    exported, _ = _export_cuda_pallas(model, batch_size=2)
    text = exported.mlir_module()
    assert exported.platforms == ("cuda",)
    spec = model.spec  # one fused kernel per block; wide blocks run the split plan's kernels
    calls = sum(depth * block_kernel_count(cfg.channels, cfg.kernel_size, cfg.group_width,
                                           cfg.hidden, "float32",
                                           rows=2 * (32 // spec.stem_size // 2 ** i) ** 2)
                for i, (depth, cfg) in enumerate((d, spec.block_config(i))
                                                 for i, d in enumerate(spec.depths)))
    assert text.count(export_lib.TRITON_CALL) == calls, "the block kernels of every block"


@pytest.mark.parametrize("argv, needle", [
    (["--workdir", "/nonexistent", "--out", "o"], "workdir '/nonexistent' does not exist"),
    (["--workdir", "{run}", "--out", "{tmp}", "--batch-size", "0"], "need batch_size >= 1"),
    (["--workdir", "{run}", "--out", "{tmp}", "--batch-size", "any", "--block-impl", "pallas"],
     "a symbolic batch size needs block_impl='xla'"),
])
def test_bad_arguments_are_one_line(run, tmp_path, capsys, argv, needle):
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path / "o")) for a in argv]
    assert export_lib.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_convnext_cuda_pallas_export_fuses_every_block():
    # ConvNeXt design at power-of-two widths, one block per stage: every branch, fewer blocks.
    spec = dataclasses.replace(get_spec("convnext_atto"), name="convnext_w16",
                               depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    model = random_model(spec, num_classes=10, block_impl="pallas")
    model.eval()
    exported, how = _export_cuda_pallas(model, batch_size=1)
    assert how.startswith("none") and exported.out_avals[0].shape == (1, 10)
    assert exported.mlir_module().count(export_lib.TRITON_CALL) == sum(model.spec.depths)
    with pytest.raises(ValueError, match="built with block_impl='pallas'"):
        export_lib.export_model(model, batch_size=1, image_size=32, block_impl="xla")


def test_symbolic_batch_artifact(run, tmp_path):
    """--batch-size any: one artifact serves every batch size (XLA blocks)."""
    out = tmp_path / "any"
    assert export_lib.main(["--workdir", str(run), "--out", str(out), "--batch-size", "any"]) == 0
    info = json.loads((out / "serving.json").read_text())
    assert info["input"]["shape"] == [None, 32, 32, 3]
    exp = jax.export.deserialize((out / "model.jaxexport").read_bytes())
    model = load_run(run).model
    x = np.random.default_rng(3).standard_normal((3, 32, 32, 3)).astype(np.float32)
    want = np.asarray(jax.jit(lambda a: model(a))(x))
    for n in (1, 3):
        got = np.asarray(exp.call(x[:n]))
        assert got.shape == (n, 3) and _rel_err(got, want[:n]) < RTOL


def test_library_modules_do_not_import_training_packages():
    code = ("import sys, convfirst_jax, convfirst_jax.export, convfirst_jax.predict, "
            "convfirst_jax.weights.run, convfirst_jax.weights.__main__; "
            "bad = {'grain', 'ml_collections', 'orbax', 'torch'} & "
            "{m.split('.')[0] for m in sys.modules}; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
