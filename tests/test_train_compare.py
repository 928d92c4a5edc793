"""The CPU train-step comparison: PyTorch twins, the table, bad arguments."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from convfirst_jax import create_model
from convfirst_jax.bench import train_compare
from convfirst_jax.bench.torch_compare import timm_train_name


def test_pytorch_names():
    assert timm_train_name("convfirst_atto_gw8") == "torch_convfirst_atto_gw8"
    assert timm_train_name("convnext_atto") == "convnext_atto"
    assert timm_train_name("resnet18") == "resnet18"


@pytest.mark.parametrize("name", ["convfirst_atto", "convfirst_atto_gw8"])
def test_pytorch_convfirst_twin_has_the_same_parameters(name):
    torch = pytest.importorskip("torch")
    from convfirst_jax.bench.torch_compare import torch_convfirst

    twin = torch_convfirst(name, num_classes=10)
    ours = create_model(name, num_classes=10, rngs=nnx.Rngs(0))
    n_ours = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert sum(p.numel() for p in twin.parameters()) == n_ours
    y = twin.eval()(torch.zeros(2, 3, 64, 64))
    assert tuple(y.shape) == (2, 10)


def test_markdown_table_and_bad_arguments(tmp_path, capsys):
    rec = {"model": "resnet18", "batch_size": 64, "resolution": 64, "jax_images_per_s": 101.4,
           "jax_library_images_per_s": 12.2, "torch_model": "resnet18",
           "torch_images_per_s": 90.6, "jax_over_torch": 1.119, "load_median": 3.25}
    md = train_compare.markdown([rec], {"date": "2026-12-01 20:00 UTC", "jax": "0.10.2",
                                        "cpu_count": 2})
    assert "| resnet18 | 101 | 12 | resnet18 | 91 | 1.12 | - | - | - | 3.2 |" in md
    rec.update(jax_best_images_per_s=120.2, torch_best_images_per_s=100.0,
               jax_over_torch_best=1.202)
    md = train_compare.markdown([rec], {"date": "2026-12-01 20:00 UTC", "jax": "0.10.2",
                                        "cpu_count": 2})
    assert "| resnet18 | 101 | 12 | resnet18 | 91 | 1.12 | 120 | 100 | 1.20 | 3.2 |" in md
    with pytest.raises(SystemExit):
        train_compare.main(["--out", str(tmp_path), "--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown variant"):
        train_compare.make_jax_train_step("resnet18", batch_size=2, resolution=32,
                                          num_classes=2, variant="fastest")
