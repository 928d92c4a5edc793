"""train.evaluate and convfirst_jax.predict on tiny run directories (tests/fixtures/runs.py).

The reference is computed separately: each val image through ``convfirst_jax.transforms.eval_image``
+ ``normalize`` one by one, the saved model (not the restored one) applied to it, and top-k
counted by rank (how many logits beat the label's) in plain numpy.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fixtures.runs import make_run  # noqa: E402

from convfirst_jax import predict as predict_lib  # noqa: E402
from convfirst_jax.weights import export_state_dict  # noqa: E402
from convfirst_jax.weights.run import load_run  # noqa: E402
from convfirst_jax import transforms  # noqa: E402
from train import data  # noqa: E402
from train import evaluate as evaluate_lib  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """4 classes x 5 val images (40 px); train/ has 2 per class (only its folder names count)."""
    return data.ensure_synthetic_dataset(tmp_path_factory.mktemp("evaldata"), num_classes=4,
                                         train_per_class=2, val_per_class=5, image_size=40)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):
    """convfirst_atto run with an EMA, checkpoints at steps 2 (top-1 0.6) and 4 (0.3)."""
    wd = tmp_path_factory.mktemp("run")
    models = make_run(wd, model="convfirst_atto", data_dir=tiny_data,
                      classes=data.class_names(tiny_data), ema=True, steps=(2, 4),
                      top1=(0.6, 0.3))
    return wd, models


_REFERENCES: dict = {}


def _reference(model, data_dir, image_size):
    key = (id(model), str(data_dir), image_size)
    if key not in _REFERENCES:
        _REFERENCES[key] = _compute_reference(model, data_dir, image_size)
    return _REFERENCES[key]


def _compute_reference(model, data_dir, image_size):
    paths, labels = data.list_images(data_dir, "val")
    x = np.stack([transforms.normalize(transforms.eval_image(open(p, "rb").read(),
                                                             image_size)[0]) for p in paths])
    model.eval()
    logits = np.asarray(jax.jit(lambda a: model(a))(x), np.float64)
    labels = np.asarray(labels)
    label_logit = logits[np.arange(len(labels)), labels]
    rank = (logits > label_logit[:, None]).sum(axis=1)
    z = logits - logits.max(1, keepdims=True)
    loss = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1)))
    per_class = {c: float((rank[labels == c] == 0).mean()) for c in np.unique(labels)}
    return dict(top1=float((rank == 0).mean()), top5=float((rank < 5).mean()),
                loss=float(loss.mean()), per_class=per_class, logits=logits, paths=paths)


def test_evaluate_matches_reference_with_ema_and_padding(run, tiny_data):
    wd, models = run
    loaded = load_run(wd)                      # latest = step 4, EMA weights
    assert loaded.step == 4 and loaded.ema
    result = evaluate_lib.evaluate(loaded, str(tiny_data), batch_size=8)  # 20 = 8 + 8 + 4 pad
    ref = _reference(models[1][1], tiny_data, 32)
    assert result["count"] == 20 and result["unreadable"] == 0
    assert result["top1"] == pytest.approx(ref["top1"], abs=1e-12)
    assert result["top5"] == pytest.approx(ref["top5"], abs=1e-12)
    assert result["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert {c["index"]: c["top1"] for c in result["per_class"]} == ref["per_class"]
    assert [c["class"] for c in result["per_class"]] == data.class_names(tiny_data)
    assert result["images_per_s"] > 0 and result["forward_images_per_s"] > 0


def test_cli_best_step_raw_weights_and_json(run, tiny_data, tmp_path, capsys):
    wd, models = run
    out = tmp_path / "eval.json"
    rc = evaluate_lib.main(["--workdir", str(wd), "--step", "best", "--no-ema",
                            "--batch-size", "10", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["step"] == 2 and result["ema"] is False
    ref = _reference(models[0][0], tiny_data, 32)
    assert result["top1"] == pytest.approx(ref["top1"], abs=1e-12)
    assert "top-1" in printed and "per-class top-1" in printed
    assert data.class_names(tiny_data)[3] in printed


def test_weights_path_end_to_end(tiny_data, tmp_path, capsys):
    """--weights FILE --model NAME: timm-named file of a 4-class resnet18, 32 px."""
    from model_fill import random_model

    model = random_model("resnet18", num_classes=4, seed=5)
    path = export_state_dict(model, tmp_path / "r18.safetensors")
    rc = evaluate_lib.main(["--weights", str(path), "--model", "resnet18", "--data-dir",
                            str(tiny_data), "--image-size", "32", "--batch-size", "20",
                            "--json", str(tmp_path / "e.json")])
    assert rc == 0
    result = json.loads((tmp_path / "e.json").read_text())
    ref = _reference(model, tiny_data, 32)
    assert result["top1"] == pytest.approx(ref["top1"], abs=1e-12)
    assert result["loss"] == pytest.approx(ref["loss"], rel=1e-5)


@pytest.mark.parametrize("argv, needle", [
    (["--workdir", "/nonexistent/run"], "does not exist"),
    (["--weights", "w.safetensors"], "--weights needs --model"),
    ([], "pass either --workdir RUN or --weights FILE --model NAME"),
    (["--workdir", "{empty}"], "config.json is missing"),
    (["--workdir", "{run}", "--step", "7"], "no checkpoint at step 7; available: [2, 4]"),
])
def test_bad_arguments_are_one_line(run, tmp_path, capsys, argv, needle):
    wd, _ = run
    argv = [a.replace("{empty}", str(tmp_path)).replace("{run}", str(wd)) for a in argv]
    assert evaluate_lib.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_predict_top5_names_from_classes_json(run, tiny_data, capsys):
    wd, models = run
    paths = data.list_images(tiny_data, "val")[0][:3]
    assert predict_lib.main(list(paths) + ["--workdir", str(wd), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # The reference forward runs the same three images as one batch, as predict does: XLA's
    # CPU convolutions pick their algorithm per batch shape, so logits of a different batch
    # (the 32-image reference) differ by f32 reassociation (~1e-5 relative in a probability).
    model = models[1][1]
    model.eval()
    x = np.stack([transforms.normalize(transforms.eval_image(open(p, "rb").read(), 32)[0])
                  for p in paths])
    ref_logits = np.asarray(jax.jit(lambda a: model(a))(x), np.float64)
    classes = data.class_names(tiny_data)
    for item, logits in zip(got, ref_logits):
        order = sorted(range(4), key=lambda i: -logits[i])     # 4 classes: top-5 = all 4
        assert [t["index"] for t in item["top"]] == order
        assert [t["class"] for t in item["top"]] == [classes[i] for i in order]
        p = np.exp(logits - logits.max())
        np.testing.assert_allclose([t["prob"] for t in item["top"]], (p / p.sum())[order],
                                   rtol=1e-5)
    text = predict_lib.format_predictions(paths[:1], [got[0]["top"]]).splitlines()
    top = got[0]["top"][0]
    assert text[0] == str(paths[0])
    assert text[1] == f"  1. {top['prob']:7.2%}  {top['class']} ({top['index']})"


def test_predict_bad_image_is_one_line(run, tmp_path, capsys):
    wd, _ = run
    assert predict_lib.main([str(tmp_path / "missing.jpg"), "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jpg' does not exist" in err[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert predict_lib.main([str(bad), "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode image" in err[0]


def test_label_map(tmp_path):
    classes = ["a", "b", "c"]
    np.testing.assert_array_equal(evaluate_lib._label_map(None, classes, 5), [0, 1, 2])
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"a": 7, "b": 0, "c": 3}))
    np.testing.assert_array_equal(evaluate_lib._label_map(str(path), classes, 10), [7, 0, 3])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        evaluate_lib._label_map(str(path), classes, 5)
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"no entry for class folders \['b', 'c'\]"):
        evaluate_lib._label_map(str(path), classes, 5)
    with pytest.raises(ValueError, match="the data has 3 classes but the model only 2"):
        evaluate_lib._label_map(None, classes, 2)
