"""PyTorch weight import / export against logits PyTorch computed (tests/fixtures/weights).

The fixtures are written by scripts/make_weight_fixtures.py (needs torch + timm +
torchvision); these tests need neither. Each fixture is a random reduced-width model in
its PyTorch naming, weights stored as float16, and the float32 logits PyTorch computed from
exactly those (float16-rounded) weights, so both sides compute in float32 from identical
values. Tolerance: |diff| <= 1e-5 + 1e-5 |logit| -- float32 round-off (6e-8 relative per
operation) accumulated over sums of up to ~6k terms and ~20 layers in a different order
(the measured gap is <= 3e-6 on logits of size ~4).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_fill import abstract_model, random_model
from convfirst_jax.specs import ResNetSpec, get_spec
from convfirst_jax.weights import (check_state_dict, export_state_dict, load_pretrained,
                                   load_state_dict, model_state_dict, read_state_dict)
from convfirst_jax.weights import names as names_lib

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "weights"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ATOL = RTOL = 1e-5


def fixture_spec(name: str):
    f = MANIFEST["fixtures"][name]
    if f["kind"] == "convnext":  # convnext_atto's design (k7, LN, GELU, layer scale) at width 16
        return dataclasses.replace(get_spec("convnext_atto"), name=name,
                                   depths=tuple(f["depths"]), dims=tuple(f["dims"]))
    return ResNetSpec(name, f["block"], tuple(f["layers"]), f["width"])


@pytest.fixture(scope="module")
def references():
    from safetensors.numpy import load_file
    return load_file(str(FIXTURES / "references.safetensors"))


def _logits(model, x_nchw: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(lambda x: model(x))(jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


@pytest.fixture(scope="module")
def convnext_timm():
    return load_pretrained(fixture_spec("convnext_w16_timm"),
                           FIXTURES / "convnext_w16_timm.safetensors")


@pytest.mark.parametrize("name", sorted(MANIFEST["fixtures"]))
def test_fixture_logits_match_pytorch(name, references):
    model = load_pretrained(fixture_spec(name), FIXTURES / MANIFEST["fixtures"][name]["file"])
    got = _logits(model, references[f"{name}.input"])
    want = references[f"{name}.logits"]
    assert got.shape == want.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("key", sorted(MANIFEST["shapes"]))
def test_full_size_names_and_shapes(key):
    """Every key and shape of the real timm / torchvision / official models maps exactly once."""
    source, model_name = key.split("/")
    shapes = {k: tuple(int(d) for d in v.split(",")) if v else ()
              for k, v in MANIFEST["shapes"][key].items()}
    model = abstract_model(model_name, num_classes=1000)
    detected = names_lib.detect_naming(shapes)
    assert detected == ("official" if source == "official" else "timm")
    entries = check_state_dict(model, shapes, naming=source)
    assert sorted(e.name for e in entries) == sorted(shapes)


def test_missing_unexpected_and_misshaped_in_one_error():
    sd = read_state_dict(FIXTURES / "convnext_w16_timm.safetensors")
    del sd["stages.2.blocks.3.norm.bias"]
    sd["stages.9.extra.weight"] = np.zeros(3, np.float16)
    sd["stem.0.weight"] = np.zeros((16, 3, 2, 2), np.float16)
    model = abstract_model(fixture_spec("convnext_w16_timm"), num_classes=1000)
    with pytest.raises(ValueError) as e:
        check_state_dict(model, {k: v.shape for k, v in sd.items()}, naming="timm")
    msg = str(e.value)
    assert "1 missing: stages.2.blocks.3.norm.bias" in msg
    assert "1 unexpected: stages.9.extra.weight" in msg
    assert "1 mis-shaped: stem.0.weight (16, 3, 2, 2) (model expects (16, 3, 4, 4))" in msg


def test_wrong_architecture_is_named(tmp_path):
    with pytest.raises(ValueError, match="convnext_atto"):
        load_pretrained("convnext_atto", FIXTURES / "convnext_w16_timm.safetensors")
    with pytest.raises(ValueError,
                       match="these are resnet weights but convnext_w16_timm is a convnext"):
        load_pretrained(fixture_spec("convnext_w16_timm"),
                        FIXTURES / "resnet18_w8_timm.safetensors")


def test_head_reset_only_when_asked(caplog, convnext_timm):
    spec = fixture_spec("convnext_w16_timm")
    path = FIXTURES / "convnext_w16_timm.safetensors"
    with pytest.raises(ValueError, match="reset_head=True"):
        load_pretrained(spec, path, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="convfirst_jax"):
        model = load_pretrained(spec, path, num_classes=10, reset_head=True, seed=3)
    said = [r for r in caplog.records if "head" in r.getMessage()]
    assert len(said) == 1 and "1000-class head" in said[0].getMessage()
    assert model.head.fc.kernel[...].shape == (128, 10)
    np.testing.assert_array_equal(model.head.norm.scale[...], convnext_timm.head.norm.scale[...])
    np.testing.assert_array_equal(model.stages[3].blocks[1].fc2.kernel[...],
                                  convnext_timm.stages[3].blocks[1].fc2.kernel[...])
    # The new head is timm's init (trunc normal std 0.02, zero bias), not file values.
    w = np.asarray(model.head.fc.kernel[...])
    assert 0.01 < w.std() < 0.03 and not np.any(model.head.fc.bias[...])


@pytest.mark.parametrize("name", ["convnext_w16_timm", "resnet_bottleneck_w8_torchvision"])
def test_export_round_trip(tmp_path, name):
    spec = fixture_spec(name)
    src = FIXTURES / MANIFEST["fixtures"][name]["file"]
    model = load_pretrained(spec, src)
    out = export_state_dict(model, tmp_path / "w.safetensors", conv_mlp=True)
    original, written = read_state_dict(src), read_state_dict(out)
    assert list(written) == list(original)          # same keys, PyTorch state_dict order
    for k, v in original.items():
        assert written[k].shape == v.shape, k
        np.testing.assert_array_equal(written[k].astype(np.float32), v.astype(np.float32),
                                      err_msg=k)
    again = load_pretrained(spec, out)
    for (p1, v1), (p2, v2) in zip(jax.tree_util.tree_leaves_with_path(
            _params(model)), jax.tree_util.tree_leaves_with_path(_params(again))):
        assert p1 == p2
        np.testing.assert_array_equal(v1, v2)


def _params(model):
    from flax import nnx
    return nnx.state(model, nnx.Param, nnx.BatchStat)


def test_export_loads_into_timm(tmp_path, references):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "scripts"))
    try:
        import make_weight_fixtures as mk
        _, timm, _ = mk.import_torch_stack()
    except ImportError:
        pytest.skip("timm / torchvision not installed")
    finally:
        sys.path.pop(0)
    from safetensors.torch import load_file

    name = "convnext_w16_timm"
    model = load_pretrained(fixture_spec(name), FIXTURES / f"{name}.safetensors")
    # Change the weights so that the check is not just the fixture coming back.
    model.stages[1].blocks[0].gamma.set_value(model.stages[1].blocks[0].gamma[...] * 2.0)
    path = export_state_dict(model, tmp_path / "ours.safetensors", conv_mlp=True)
    tm = mk.timm_convnext_w16(torch, timm)
    tm.load_state_dict(load_file(str(path)), strict=True)
    tm.eval()
    x = references[f"{name}.input"]
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_logits(model, x), want, rtol=RTOL, atol=ATOL)


def test_pth_checkpoint_with_model_key_and_ddp_prefix(tmp_path):
    torch = pytest.importorskip("torch")
    sd = read_state_dict(FIXTURES / "convnext_w16_official.safetensors")
    ckpt = {"model": {f"module.{k}": torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    back = read_state_dict(tmp_path / "checkpoint.pth")
    assert sorted(back) == sorted(sd)
    model = abstract_model(fixture_spec("convnext_w16_official"), num_classes=1000)
    check_state_dict(model, {k: v.shape for k, v in back.items()}, naming="official")


def test_pth_without_torch_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'convfirst-jax\[torch\]'"):
        read_state_dict(path)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights format"):
        read_state_dict(tmp_path / "w.npz")


def test_bfloat16_safetensors(tmp_path):
    """safetensors' numpy API has no bfloat16; the reader decodes it with ml_dtypes."""
    import ml_dtypes

    values = np.array([1.5, -2.25, 3.0], np.float32)
    raw = values.astype(ml_dtypes.bfloat16).tobytes()
    header = json.dumps({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(raw)]}})
    header += " " * (-len(header) % 8)
    path = tmp_path / "bf.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw)
    np.testing.assert_array_equal(read_state_dict(path)["a"].astype(np.float32), values)


def test_export_default_mlp_layout_follows_timm():
    """timm builds atto..nano with 1x1-conv MLPs and tiny+ with nn.Linear."""
    atto = model_state_dict(random_model("convnext_atto", num_classes=1000))
    assert atto["stages.0.blocks.0.mlp.fc1.weight"].shape == (160, 40, 1, 1)
    assert atto["head.fc.weight"].shape == (1000, 320)
    want = {k: tuple(int(d) for d in v.split(",")) if v else ()
            for k, v in MANIFEST["shapes"]["timm/convnext_atto"].items()}
    assert {k: v.shape for k, v in atto.items()} == want


def test_load_state_dict_casts_to_param_dtype():
    sd = read_state_dict(FIXTURES / "resnet18_w8_timm.safetensors")
    model = random_model(fixture_spec("resnet18_w8_timm"), num_classes=1000)
    load_state_dict(model, sd)
    assert model.conv1.kernel[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(model.bn1.var[...]),
                                  sd["bn1.running_var"].astype(np.float32))


def test_convfirst_round_trip(tmp_path):
    """ConvFirstNet has no PyTorch twin: its timm-style file must still round-trip exactly."""
    model = random_model("convfirst_atto", num_classes=7, seed=4)
    path = export_state_dict(model, tmp_path / "cf.safetensors")
    sd = read_state_dict(path)
    assert "stages.0.blocks.0.mlp.fc1_norm.running_var" in sd
    again = load_pretrained("convfirst_atto", path)
    for (p1, v1), (p2, v2) in zip(jax.tree_util.tree_leaves_with_path(_params(model)),
                                  jax.tree_util.tree_leaves_with_path(_params(again))):
        assert p1 == p2
        np.testing.assert_array_equal(v1, v2)


def test_weights_cli(tmp_path, capsys):
    from convfirst_jax.weights.__main__ import main

    src = export_state_dict(random_model("resnet18", num_classes=1000), tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"
    assert main(["resnet18", str(src), "--num-classes", "10", "--reset-head",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "122 tensors (timm names) -> resnet18" in printed and "10 classes" in printed
    assert read_state_dict(out)["fc.weight"].shape == (10, 512)
    assert main(["resnet18", str(FIXTURES / "resnet18_w8_timm.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mis-shaped: conv1.weight (8, 3, 7, 7)" in err[0]
