"""CUDA lowering of the fused block without a GPU: jax.export(platforms=['cuda']).

With ``interpret=False`` the pallas_call goes through the Pallas Triton lowering (power-of-two
block shapes, dot dims >= 16, supported primitives); the exported StableHLO must contain the
Triton custom call. Where the private hook is available, each generated Triton module is also
run through the MLIR verifier. Export only lowers, so this is cheap.

Covered: every distinct block configuration of the registered models
(convfirst_jax.specs.MODEL_SPECS, at the feature-map size a 224 px input gives that stage)
-- forward + gradient in float32 and forward in bfloat16 -- and every configuration of the
forward-test covering design (tests/kernel_cases.py CASES), forward + gradient. At batch 2
the wide model blocks take the split plan with its two GEMMs; the split plan's fused MLP
kernel (calls with enough pixels) has its own cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from convfirst_jax.specs import MODEL_SPECS, FourStageNetSpec
from pallas_kernels import LAUNCH_TABLE, conv_first_block, cuda_export_target
from kernel_cases import CASES

TRITON_CALL = "__gpu$xla.gpu.triton"
DISABLED = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]


def model_block_configs() -> dict[str, dict]:
    """Distinct conv-first block configurations of the registered models (first stage
    resolution seen for each). BatchNorm blocks map to the kernel's folded "affine" norm."""
    configs = {}
    for name, spec in sorted(MODEL_SPECS.items()):
        if not isinstance(spec, FourStageNetSpec):
            continue  # ResNets have no conv-first blocks
        for stage in range(len(spec.dims)):
            cfg = spec.block_config(stage)
            kw = dict(
                c=cfg.channels, k=cfg.kernel_size, gw=cfg.group_width, hidden=cfg.hidden,
                norm="layernorm" if cfg.norm == "layernorm" else "affine",
                act=cfg.activation, eps=cfg.norm_eps, ls=cfg.layer_scale_init is not None)
            key = "-".join(f"{k_}{v}" for k_, v in kw.items())
            configs.setdefault(key, dict(kw, hw=224 // spec.stem_size // 2 ** stage))
    return configs


MODEL_CONFIGS = model_block_configs()


class _TritonVerifier:
    """Wraps the Pallas Triton module builder to MLIR-verify each module it produces."""

    def __init__(self):
        self.count = 0
        try:
            from jax._src.pallas.triton import pallas_call_registration as reg
            self._owner = reg.lowering
            self._orig = reg.lowering.lower_jaxpr_to_triton_module
        except (ImportError, AttributeError):  # private API moved: export checks only
            self._owner = None

    def __enter__(self):
        if self._owner is not None:
            orig = self._orig

            def verified(*args, **kwargs):
                result = orig(*args, **kwargs)
                assert result.module.operation.verify(), "invalid Triton module"
                self.count += 1
                return result

            self._owner.lower_jaxpr_to_triton_module = verified
        return self

    def __exit__(self, *exc):
        if self._owner is not None:
            self._owner.lower_jaxpr_to_triton_module = self._orig


@pytest.fixture(scope="module")
def verifier():
    with _TritonVerifier() as v:
        yield v


def _params_spec(c, k, gw, hidden, ls, dtype=jnp.float32):
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    p = dict(conv_w=s(k, k, gw, c), conv_b=s(c), norm_scale=s(c), norm_shift=s(c),
             w1=s(c, hidden), b1=s(hidden), w2=s(hidden, c), b2=s(c))
    if ls:
        p["layer_scale"] = s(c)
    return p


def _export_cuda(verifier, fn, *args) -> None:
    """Exports ``jax.jit(fn)`` for CUDA; asserts the Triton kernel is in the module."""
    before = verifier.count
    try:
        with cuda_export_target():  # jax 0.11 needs the target GPU named
            exported = jax.export.export(jax.jit(fn), platforms=["cuda"],
                                         disabled_checks=DISABLED)(*args)
    except RuntimeError as e:
        # jaxlib > 0.10.2 compiles the Triton module at lowering time, which needs a CUDA
        # Triton compiler; the (verified) Triton module was still built.
        if "Triton compilation handler" in str(e) and verifier.count > before:
            return
        if "Triton compilation handler" in str(e):
            pytest.skip("this jaxlib compiles Triton at lowering time and has no CUDA compiler")
        raise
    text = exported.mlir_module()
    assert TRITON_CALL in text
    assert exported.platforms == ("cuda",)
    if verifier._owner is not None:
        assert verifier.count > before


def _export_block(verifier, *, n, hw, c, k, gw, hidden, norm, act, eps, ls, bs, dtype, grad):
    kw = dict(kernel_size=k, group_width=gw, norm=norm, activation=act, eps=eps,
              interpret=False)
    x = jax.ShapeDtypeStruct((n, hw[0], hw[1], c), dtype)
    params = _params_spec(c, k, gw, hidden, ls)
    bsv = jax.ShapeDtypeStruct((n,), jnp.float32) if bs else None
    if not grad:
        _export_cuda(verifier, lambda x_, p_, b_: conv_first_block(x_, p_, branch_scale=b_,
                                                                   **kw), x, params, bsv)
        return

    def forward_and_vjp(x_, p_, b_, g_):  # the forward and the gradient in one lowering
        out, vjp = jax.vjp(lambda a, p, b: conv_first_block(a, p, branch_scale=b, **kw),
                           x_, p_, b_)
        return out, vjp(g_)

    _export_cuda(verifier, forward_and_vjp, x, params, bsv, x)


def test_model_configs_enumerated():
    keys = set(MODEL_CONFIGS)
    # ConvNeXt: 15 distinct widths (k7 LN GELU + layer scale); ConvFirst: 5 widths x gw{1,8}.
    assert len(keys) == 25, sorted(keys)
    assert {c["gw"] for c in MODEL_CONFIGS.values()} == {1, 8}
    assert {c["hw"] for c in MODEL_CONFIGS.values()} == {56, 28, 14, 7}


@pytest.mark.parametrize("key", sorted(MODEL_CONFIGS))
def test_model_block_exports_for_cuda(verifier, key):
    cfg = dict(MODEL_CONFIGS[key])
    hw = cfg.pop("hw")
    common = dict(n=2, hw=(hw, hw), bs=True, **cfg)
    _export_block(verifier, dtype=jnp.float32, grad=True, **common)
    _export_block(verifier, dtype=jnp.bfloat16, grad=False, **common)


@pytest.mark.parametrize("case", CASES, ids=lambda cs: cs.id)
def test_covering_design_exports_for_cuda(verifier, case):
    _export_block(verifier, n=case.n, hw=case.hw, c=case.c, k=case.k, gw=case.gw,
                  hidden=case.e * case.c, norm=case.norm, act=case.act, eps=1e-6, ls=case.ls,
                  bs=case.bs, dtype=jnp.dtype(case.dtype), grad=True)


@pytest.mark.parametrize("c,hw,n,dtype,grad", [
    (256, 14, 128, jnp.bfloat16, False),  # C256 14x14 at batch 128: 196 programs of 128 pixels
    (160, 14, 128, jnp.float16, True),  # padded channels (Cp = 256)
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_split_plan_fused_mlp_exports_for_cuda(verifier, c, hw, n, dtype, grad):
    """The split plan with the fused MLP kernel (conv + norm, then one MLP kernel) lowers
    for CUDA: two Triton kernels per block, forward (and the XLA backward) exported."""
    from pallas_kernels import block_kernel_count
    from pallas_kernels.split_block import split_kernels, split_launch

    params = _params_spec(c, 7, 1, 4 * c, True)
    assert split_kernels(split_launch((n, hw, hw, c), dtype, params, 7, 1, "layernorm")) == (
        "conv_norm", "mlp")
    assert block_kernel_count(c, 7, 1, 4 * c, dtype, rows=n * hw * hw) == 2
    before = verifier.count
    _export_block(verifier, n=n, hw=(hw, hw), c=c, k=7, gw=1, hidden=4 * c, norm="layernorm",
                  act="gelu", eps=1e-6, ls=True, bs=True, dtype=dtype, grad=grad)
    if verifier._owner is not None:
        assert verifier.count - before == 2


@pytest.mark.parametrize("k", [3, 7])
def test_split_plan_channel_blocks_export_for_cuda(verifier, k):
    """C512 7x7 gw8 affine-SiLU at batch 128 (ConvFirst's last stage): the conv + norm kernel
    of the split plan on a (pixel tiles, channel blocks) grid, 128 pixels x 32 channels per
    program, then the two GEMMs; the whole block lowers for CUDA."""
    from convfirst_jax.bench import static

    cfg = static.parse_config(f"C=512,HW=7,k={k},gw=8,norm=affine,act=silu,ls=0,N=128")
    modules = static.export_triton_modules(cfg)
    assert len(modules) == 3
    info = modules[0][1]
    assert (info["grid_x"], info.get("grid_y", 1)) == (-(-128 * 49 // 128), 512 // 32)
    _export_block(verifier, n=128, hw=(7, 7), c=512, k=k, gw=8, hidden=2048, norm="affine",
                  act="silu", eps=1e-5, ls=False, bs=False, dtype=jnp.bfloat16, grad=False)


_BRIEF_HW = {64: 56, 128: 28, 256: 14, 512: 7}  # the stage resolutions of a 224 px input


@pytest.mark.parametrize("key", sorted(LAUNCH_TABLE),
                         ids=lambda key: "-".join(map(str, key)))
def test_every_launch_table_row_exports_for_cuda(verifier, key):
    """Each LAUNCH_TABLE row lowers at its own tile: batch 128 at the stage resolution, so
    the small-call rule keeps the row (the model-config cases above run at batch 2 and get
    shrunk tiles). gw1 rows serve the ConvNeXt and the ConvFirst block, gw8 rows ConvFirst."""
    from pallas_kernels.fused_block import block_launch_config

    cp, k, gw, hidden, dtype_name = key
    hw = _BRIEF_HW[cp]
    dtype = jnp.dtype(dtype_name)
    styles = [("affine", "silu", False)] + ([("layernorm", "gelu", True)] if gw == 1 else [])
    for norm, act, ls in styles:
        params = _params_spec(cp, k, gw, hidden, ls)
        assert block_launch_config((128, hw, hw, cp), dtype, params, k, gw) == LAUNCH_TABLE[key]
        _export_block(verifier, n=128, hw=(hw, hw), c=cp, k=k, gw=gw, hidden=hidden, norm=norm,
                      act=act, eps=1e-6, ls=ls, bs=False, dtype=dtype, grad=False)


@pytest.mark.parametrize("c,hw,k,gw,norm,act,ls,parts", [
    (128, 28, 3, 1, "affine", "silu", False, 16),  # 49 tiles x 16 hidden parts
    (64, 56, 7, 8, "affine", "silu", False, 4),  # grouped (block-diagonal conv), 8 warps
    (256, 14, 7, 1, "layernorm", "gelu", True, 32),  # wide depthwise block at batch 1
], ids=lambda v: str(v))
def test_hidden_parts_export_for_cuda(monkeypatch, verifier, c, hw, k, gw, norm, act, ls,
                                     parts):
    """Batch 1 with the hidden dim split over a second grid axis lowers for CUDA: one
    Triton kernel with a (tiles, parts) grid (the partial sums and the epilogue are XLA),
    forward in bfloat16 and forward + gradient in float32. The grouped case does not pay in
    the static model (tuning.parts_pay) and is forced, so the form stays covered."""
    from convfirst_jax.bench import static
    from pallas_kernels import block_kernel_count, tuning
    from pallas_kernels.fused_block import block_launch_config

    monkeypatch.setattr(tuning, "PARTS_MAX_TILES", 10 ** 6)
    monkeypatch.setattr(tuning, "PARTS_MAX_CONV_RATIO", float("inf"))

    params = _params_spec(c, k, gw, 4 * c, ls)
    lc = block_launch_config((1, hw, hw, c), jnp.bfloat16, params, k, gw)
    assert lc.tile == 16 and lc.hidden_parts == parts
    assert block_kernel_count(c, k, gw, 4 * c, jnp.bfloat16, rows=hw * hw) == 1
    cfg = static.parse_config(f"C={c},HW={hw},k={k},gw={gw},norm={norm},act={act},"
                              f"ls={int(ls)},N=1")
    ((_, info),) = static.export_triton_modules(cfg)
    assert (info["grid_x"], info.get("grid_y", 1)) == (-(-hw * hw // 16), parts)
    common = dict(n=1, hw=(hw, hw), c=c, k=k, gw=gw, hidden=4 * c, norm=norm, act=act,
                  eps=1e-6, ls=ls, bs=True)
    _export_block(verifier, dtype=jnp.bfloat16, grad=False, **common)
    _export_block(verifier, dtype=jnp.float32, grad=True, **common)


@pytest.mark.parametrize("dtype,act,asm", [
    ("bfloat16", "gelu", "tanh.approx.f32"), ("bfloat16", "silu", "tanh.approx.f32"),
    ("float16", "gelu", "rcp.approx.ftz.f32"), ("float32", "silu", "rcp.approx.ftz.f32"),
])
def test_lowered_activation_is_the_dtypes_mufu_form(dtype, act, asm):
    """The Triton kernel carries its dtype's activation family (pallas_kernels/activations.py):
    one tanh.approx per hidden element in bfloat16 and no reciprocal; rcp.approx and no
    tanh.approx in float16 / float32. Read from the TTIR lowered for CUDA on this CPU."""
    from convfirst_jax.bench import static

    cfg = static.parse_config(f"C=64,HW=16,k=3,gw=1,norm=layernorm,act={act},N=2,"
                              f"dtype={dtype}")
    ((ttir, _),) = static.export_triton_modules(cfg)
    other = {"tanh.approx.f32": "rcp.approx.ftz.f32",
             "rcp.approx.ftz.f32": "tanh.approx.f32"}[asm]
    assert asm in ttir and other not in ttir
