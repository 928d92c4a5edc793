"""Static H100 (sm_90) report of the fused conv-first block kernel, on a machine with no GPU.

``python -m convfirst_jax.bench static [--preset brief] [--config C=128,HW=28,k=3,...]``

Pipeline, per block configuration:

1. ``jax.export(platforms=["cuda"])`` of :func:`pallas_kernels.conv_first_block` (``interpret=
   False``); a hook on the Pallas-Triton lowering keeps the generated Triton module as text
   (TTIR); num_warps / num_stages / grid come from the ``__gpu$xla.gpu.triton`` backend config.
2. The optional ``triton`` package (extra ``static``: ``pip install -e .[static]``) compiles
   the TTIR for sm_90a (TTGIR, PTX, cubin); its bundled ``ptxas -v`` gives registers / spills
   and ``nvdisasm`` the SASS. On a GPU, XLA compiles the same TTIR with its own Triton, so
   register counts can differ by ~ +-30.
3. Occupancy on the H100 (registers, shared memory, warps, CTAs per SM), waves at the given
   batch and at batch 1, tensor-core instruction mix (wgmma = HGMMA, mma.sync = HMMA) and the
   share of their work that is useful.
4. A throughput model: dynamic warp instructions per phase (conv = everything before the first
   loop with tensor-core instructions, mlp = that loop, rest = after) charged to the H100 pipes
   (issue, FP32, ALU, MUFU, conversions, L1 wavefronts, tensor cores, L2->SM bytes, HBM).
   "overlap" = max over pipes (everything overlaps); "serial" = sum over phases of each phase's
   max. Both ignore latency, so both are optimistic, and both spread the work evenly over
   every SM; ``model_waves_us`` (JSON rows) charges each kernel for whole waves of programs
   (:func:`wave_quantized`). The split plan's kernels (conv + norm, then the fused MLP kernel
   or two GEMMs) are modelled one by one and summed (:func:`analyse_split`). Small calls
   whose fused kernel splits the hidden dim over programs (``LaunchConfig.hidden_parts``)
   are charged each part's conv + norm recompute and x reads, the f32 partials written, and
   the XLA reduction + epilogue after the kernel at HBM bandwidth (:func:`parts_reduction`).
   The launch sweeps built on :func:`analyse` live in ``scripts/`` (``sweep_launch_static.py``
   for LAUNCH_TABLE, ``sweep_split_mlp_static.py`` for the split plan's MLP form).
5. The floors come from the project's cost model (:mod:`convfirst_jax.complexity` layer costs
   and :mod:`convfirst_jax.complexity.roofline`): fused floor max(2 * MACs / peak, (x + weights
   + out) / bandwidth) and XLA's unfused floor (the waterline: every layer of the block its own
   kernel, each at max(flops / peak, bytes / bandwidth)).

Steps 3-5 are plain functions of numbers and SASS text (tested without triton); steps 1-2 need
the Pallas Triton lowering (jax) and, for 2, triton.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from convfirst_jax.complexity.costs import LayerRecorder
from convfirst_jax.complexity.networks import conv_first_block_layers
from convfirst_jax.complexity.roofline import (bound, fused_block_bytes_moved,
                                               fused_block_floor, waterline)
from convfirst_jax.dtypes import DTYPE_NAMES
from convfirst_jax.specs import ConvFirstBlockConfig

TRITON_CALL = "__gpu$xla.gpu.triton"
STATIC_LABEL = "static model, not measured"


# ------------------------------------------------------------------------------ hardware model
@dataclasses.dataclass(frozen=True)
class H100Model:
    """H100 SXM5 (sm_90) numbers the static model charges instructions and bytes to.

    ``peak_flops`` / ``hbm_bw`` are practical dense bf16 tensor-core and HBM rates (below the
    datasheet's 989 TFLOP/s and 3.35 TB/s); ``l2_bw`` and ``clock`` are assumptions.
    ``pipe_rate``: warp instructions per clock per SM (CUDA guide throughput table, cc 9.0).
    """

    num_sms: int = 132
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_reserved_per_cta: int = 1024
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    reg_alloc_unit: int = 256
    peak_flops: float = 800e12
    hbm_bw: float = 3.0e12
    l2_bw: float = 5.5e12
    clock: float = 1.755e9
    mma_sync_fraction: float = 0.6  # mma.sync (HMMA) throughput relative to wgmma on Hopper

    @property
    def pipe_rate(self) -> dict[str, float]:
        return dict(issue=4.0, fp32=4.0, alu=2.0, mufu=0.5, cvt=0.5, l1=1.0)


# ------------------------------------------------------------------------------ configurations
@dataclasses.dataclass(frozen=True)
class StaticConfig:
    """One fused-block call: shapes, block options, batch and dtype."""

    C: int
    H: int
    W: int
    k: int
    gw: int = 1
    norm: str = "layernorm"
    act: str = "gelu"
    ls: bool = True
    N: int = 128
    dtype: str = "bfloat16"
    E: int = 4

    @property
    def name(self) -> str:
        style = {("layernorm", "gelu"): "LN-gelu", ("affine", "silu"): "aff-silu"}.get(
            (self.norm, self.act), f"{self.norm}-{self.act}")
        return (f"C{self.C} {self.H}x{self.W} k{self.k} gw{self.gw} {style}"
                f"{' ls' if self.ls else ''}")

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def block_config(self) -> ConvFirstBlockConfig:
        """The model block this call stands for: LayerNorm = ConvNeXt (biases), affine =
        ConvFirst with its BatchNorms (folded in the kernel, separate layers for XLA)."""
        convnext = self.norm == "layernorm"
        return ConvFirstBlockConfig(
            channels=self.C, kernel_size=self.k, group_width=self.gw, expansion=self.E,
            norm="layernorm" if convnext else "batchnorm", activation=self.act,
            layer_scale_init=1e-6 if self.ls else None, conv_bias=convnext, mlp_bias=convnext)


_INT_KEYS = ("C", "H", "W", "k", "gw", "N", "E")


def parse_config(text: str, **defaults: Any) -> StaticConfig:
    """``"C=128,HW=28,k=3,gw=1,norm=affine,act=silu,ls=0,N=1,dtype=bfloat16,E=4"``."""
    kv: dict[str, Any] = dict(C=64, H=56, W=56, k=3)
    kv.update(defaults)
    fields = {f.name for f in dataclasses.fields(StaticConfig)}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"config item {part!r} is not KEY=VALUE (e.g. C=64,HW=56,k=7)")
        key, val = (s.strip() for s in part.split("=", 1))
        if key == "HW":
            kv["H"] = kv["W"] = int(val)
        elif key in _INT_KEYS:
            kv[key] = int(val)
        elif key == "ls":
            kv["ls"] = val.lower() in ("1", "true", "yes")
        elif key in fields:
            kv[key] = val
        else:
            raise ValueError(f"unknown config key {key!r}; valid: HW, {', '.join(sorted(fields))}")
    return StaticConfig(**kv)


BRIEF_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


def brief_configs(batch: int = 128, dtype: str = "bfloat16") -> list[StaticConfig]:
    """The 24 configurations of issue 9: 4 (C, H=W) x k {3, 7} x {ConvNeXt LN-GELU + layer
    scale, ConvFirst affine-SiLU gw1, ConvFirst affine-SiLU gw8}."""
    out = []
    for c, hw in BRIEF_SHAPES:
        for k in (3, 7):
            out.append(StaticConfig(c, hw, hw, k, 1, "layernorm", "gelu", True, batch, dtype))
            out.append(StaticConfig(c, hw, hw, k, 1, "affine", "silu", False, batch, dtype))
            out.append(StaticConfig(c, hw, hw, k, 8, "affine", "silu", False, batch, dtype))
    return out


# ------------------------------------------------------------------------------ floors
def floors(cfg: StaticConfig, hw: H100Model) -> dict[str, Any]:
    """Fused floor and XLA's unfused floor (waterline) from the project's layer costs.

    Fused floor = ``roofline.fused_block_floor``: max(2 * MACs / peak, (x + weights + out)
    bytes / bandwidth) (issue 9: the elementwise work of the fused block hides under the
    matmuls); XLA floor = the waterline of the block's unfused layers (each layer
    max(flops / peak, bytes / bandwidth)).
    """
    rec = LayerRecorder(batch_size=cfg.N, dtype_bytes=cfg.itemsize)
    conv_first_block_layers(rec, "block", (cfg.H, cfg.W, cfg.C), cfg.block_config())
    layers = rec.layers
    ops = 2 * sum(l.macs for l in layers)
    fused_bytes = fused_block_bytes_moved(layers)
    unfused_bytes = sum(l.bytes_total for l in layers)
    floor = fused_block_floor(layers, hw.peak_flops, hw.hbm_bw)
    xla_floor = waterline(layers, hw.peak_flops, hw.hbm_bw)
    conv_macs = sum(l.macs for l in layers if l.kind in ("depthwise", "grouped"))
    return dict(gflop=ops / 1e9, conv_share=2 * conv_macs / ops, fused_mb=fused_bytes / 1e6,
                unfused_mb=unfused_bytes / 1e6, floor_us=floor * 1e6,
                floor_bound=bound(ops, fused_bytes, hw.peak_flops, hw.hbm_bw),
                xla_floor_us=xla_floor * 1e6, fusion_bound=xla_floor / floor)


# ------------------------------------------------------------------------------ occupancy
def occupancy(regs: int, smem: int, warps: int, hw: H100Model) -> dict[str, Any]:
    """CTAs per SM and which resource limits them."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / hw.reg_alloc_unit) * hw.reg_alloc_unit
    limits = {
        "regs": (hw.regs_per_sm // regs_per_warp) // warps,
        "smem": (hw.smem_per_sm // (smem + hw.smem_reserved_per_cta) if smem
                 else hw.max_ctas_per_sm),
        "warps": hw.max_warps_per_sm // warps,
        "ctas": hw.max_ctas_per_sm,
    }
    limiter = min(limits, key=limits.get)
    ctas = limits[limiter]
    return dict(ctas_per_sm=ctas, limiter=limiter, warps_per_sm=ctas * warps,
                occupancy=ctas * warps / hw.max_warps_per_sm)


def waves(grid: int, ctas_per_sm: int, hw: H100Model) -> float:
    """Programs / programs resident at once (inf when a CTA does not fit)."""
    resident = ctas_per_sm * hw.num_sms
    return grid / resident if resident else float("inf")


def wave_quantized(seconds: float, n_waves: float) -> float:
    """A kernel time of the pipe model (which spreads the work evenly over every SM) charged
    for whole waves: ``seconds * ceil(waves) / waves``; e.g. 196 programs at 1 CTA per SM
    are 1.48 waves that take 2 (the last one 64 SMs busy), and 98 programs leave 34 of the
    132 SMs idle. Still optimistic (no latency). inf when a CTA does not fit (inf waves)."""
    if math.isinf(n_waves):
        return math.inf
    if not n_waves:
        return seconds
    return seconds * math.ceil(n_waves) / n_waves


# ------------------------------------------------------------------------------ SASS
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)"
                        r"((?:\.[A-Za-z0-9_]+)*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+|\.L_\w+):")
MMA_OPS = ("HGMMA", "HMMA")
_FP32 = {"FFMA", "FADD", "FMUL", "FFMA2", "FADD2", "FMUL2", "HFMA2", "HADD2", "HMUL2", "FMNMX"}
_CVT = {"F2F", "F2I", "I2F", "FRND"}
_MEM = {"LDG", "STG", "LDS", "STS", "LD", "ST", "LDL", "STL", "LDGSTS", "LDSM", "STSM", "ATOM",
        "ATOMS", "RED", "ATOMG"}
_CTRL = {"NOP", "BRA", "EXIT", "BAR", "WARPGROUP", "DEPBAR", "LDGDEPBAR", "MEMBAR", "S2R",
         "S2UR", "CS2R", "LDC", "WARPSYNC", "BSSY", "BSYNC", "YIELD", "FENCE", "SYNCS", "ELECT",
         "R2UR", "VOTEU", "CCTL", "ERRBAR", "CALL", "RET"}


@dataclasses.dataclass(frozen=True)
class SassInstr:
    addr: int
    pred: str
    op: str
    mods: str
    args: str


def parse_sass(text: str) -> tuple[list[SassInstr], dict[str, int]]:
    """Instructions and label addresses of ``nvdisasm -c`` output."""
    instrs: list[SassInstr] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in text.splitlines():
        lm = _LABEL.match(line.strip())
        if lm:
            pending.append(lm.group(1))
            continue
        m = _SASS_LINE.search(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for lab in pending:
            labels[lab] = addr
        pending = []
        instrs.append(SassInstr(addr, (m.group(2) or "").strip(), m.group(3), m.group(4),
                                m.group(5).strip()))
    return instrs, labels


def classify(ins: SassInstr) -> tuple[str, int]:
    """(pipe, L1 wavefronts) of one instruction; pipes: fp32 alu mufu cvt tensor lsu ctrl."""
    op, mods = ins.op, ins.mods
    if op in _FP32:
        return "fp32", 0
    if op == "MUFU":
        return "mufu", 0
    if op in _CVT:
        return "cvt", 0
    if op in MMA_OPS:
        return "tensor", 0
    if op in _MEM:
        if op == "LDSM":
            return "lsu", 4 if ".X4" in mods else 2 if ".X2" in mods else 1
        return "lsu", 4 if ".128" in mods else 2 if ".64" in mods else 1
    if op == "SHFL":
        return "lsu", 1
    if op.startswith("U") or op in _CTRL:
        return "ctrl", 0
    return "alu", 0  # IADD3 LOP3 SHF PRMT ISETP FSETP FSEL SEL LEA IMAD MOV F2FP ...


def mma_flops(ins: SassInstr) -> float:
    """FLOPs one warp's copy of a tensor-core instruction performs."""
    if ins.op == "HGMMA":  # a warpgroup (4 warps) issues it; each warp does a quarter
        m = re.match(r"\.(\d+)x(\d+)x(\d+)", ins.mods)
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) / 4 if m else 0.0
    if ins.op == "HMMA":
        key = ins.mods.split(".")[1] if "." in ins.mods else ""
        mnk = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4),
               "16832": (16, 8, 32)}.get(key, (0, 0, 0))
        return 2.0 * mnk[0] * mnk[1] * mnk[2]
    return 0.0


def find_loops(instrs: Sequence[SassInstr], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) instruction index of each loop (a predicated backward branch)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    loops = []
    for i, ins in enumerate(instrs):
        if ins.op != "BRA" or not ins.pred:
            continue
        m = re.search(r"(\.L_x_\d+|\.L_\w+)", ins.args)
        if m and m.group(1) in labels and labels[m.group(1)] <= ins.addr:
            loops.append((index[labels[m.group(1)]], i))
    return loops


def dynamic_counts(instrs: Sequence[SassInstr], labels: dict[str, int], mlp_trips: int,
                   conv_trips: int) -> tuple[dict[str, Counter], list[dict[str, Any]]]:
    """Per-warp dynamic counts per phase and pipe.

    The MLP loop is the last loop with tensor-core instructions (``mlp_trips`` iterations);
    when the kernel has a conv loop (``conv_trips`` > 1) it is the first loop (it may use
    tensor cores too: the block-diagonal grouped conv). Phases: "mlp" = the MLP loop,
    "conv" = everything before it, "rest" = everything after it.
    """
    loops = find_loops(instrs, labels)
    mma_loops = [lp for lp in loops if any(x.op in MMA_OPS for x in instrs[lp[0]:lp[1] + 1])]
    mlp_span = mma_loops[-1] if mma_loops else None
    conv_span = loops[0] if conv_trips > 1 and loops and loops[0] != mlp_span else None
    mult = [1] * len(instrs)
    loop_info = []
    for lo, hi in loops:
        kind = "mlp" if (lo, hi) == mlp_span else "conv" if (lo, hi) == conv_span else "other"
        trips = mlp_trips if kind == "mlp" else conv_trips if kind == "conv" else 1
        loop_info.append(dict(kind=kind, n_instr=hi - lo + 1, trips=trips))
        for j in range(lo, hi + 1):
            mult[j] *= trips
    counts = {p: Counter() for p in ("conv", "mlp", "rest")}
    for j, (ins, m) in enumerate(zip(instrs, mult)):
        if mlp_span is None or j < mlp_span[0]:
            phase = "conv"
        elif j <= mlp_span[1]:
            phase = "mlp"
        else:
            phase = "rest"
        pipe, wavefronts = classify(ins)
        c = counts[phase]
        c["issue"] += m
        if pipe in ("fp32", "alu", "mufu", "cvt"):
            c[pipe] += m
        elif pipe == "lsu":
            c["l1"] += m * wavefronts
        elif pipe == "tensor":
            c["tc_flops_" + ins.op] += m * mma_flops(ins)
        c["op_" + ins.op] += m
    return counts, loop_info


def l2_bytes(cfg: StaticConfig, tile: int, grid: int, weight_bytes_per_program: int) -> float:
    """Bytes from L2 into the SMs: per program the x rows its taps touch (flattened N*H*W
    pixel order, halo of k//2 rows and columns) plus its weights."""
    pad = cfg.k // 2
    total_px = cfg.N * cfg.H * cfg.W
    halo = pad * cfg.W + pad
    rows = 0
    for t in range(grid):
        p0, p1 = t * tile, min(total_px, (t + 1) * tile) - 1
        rows += min(total_px - 1, p1 + halo) - max(0, p0 - halo) + 1
    return rows * cfg.C * cfg.itemsize + grid * weight_bytes_per_program


def pipe_model(counts: dict[str, Counter], warps_total: int, l2: dict[str, float],
               hbm_bytes: float, hw: H100Model) -> dict[str, Any]:
    """Seconds per pipe and phase; "overlap" and "serial" totals (see module docstring)."""
    per_sm = warps_total / hw.num_sms
    phase_t: dict[str, dict[str, float]] = {}
    for phase, c in counts.items():
        t = {p: c[p] * per_sm / rate / hw.clock for p, rate in hw.pipe_rate.items()}
        t["tensor"] = (c["tc_flops_HGMMA"] / hw.peak_flops + c["tc_flops_HMMA"] / (
            hw.peak_flops * hw.mma_sync_fraction)) * warps_total
        t["l2"] = l2.get(phase, 0.0) / hw.l2_bw
        phase_t[phase] = t
    totals: Counter = Counter()
    for t in phase_t.values():
        totals.update(t)
    totals["hbm"] = hbm_bytes / hw.hbm_bw
    overlap = max(totals.values())
    serial = max(sum(max(t.values()) for t in phase_t.values()), totals["hbm"])
    return dict(overlap_s=overlap, serial_s=serial, bottleneck=max(totals, key=totals.get),
                pipe_us={p: v * 1e6 for p, v in totals.items()},
                phase_us={ph: {p: v * 1e6 for p, v in t.items()} for ph, t in phase_t.items()},
                phase_bound={ph: max(t, key=t.get) for ph, t in phase_t.items()})


# ------------------------------------------------------------------------------ jax + triton
def triton_available() -> tuple[bool, str]:
    """(available, reason): the static compile needs the optional triton package."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e}); pip install -e .[static]"
    return True, ""


def _param_specs(cfg: StaticConfig):
    import jax
    import jax.numpy as jnp

    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    hid = cfg.E * cfg.C
    p = dict(conv_w=s(cfg.k, cfg.k, cfg.gw, cfg.C), conv_b=s(cfg.C), norm_scale=s(cfg.C),
             norm_shift=s(cfg.C), w1=s(cfg.C, hid), b1=s(hid), w2=s(hid, cfg.C), b2=s(cfg.C))
    if cfg.ls:
        p["layer_scale"] = s(cfg.C)
    return p


def export_triton_modules(cfg: StaticConfig) -> list[tuple[str, dict[str, Any]]]:
    """(TTIR text, launch info) of each Triton kernel of the block exported for CUDA on this
    host, in launch order: one for the fused plan, two or three for the split plan
    (:mod:`pallas_kernels.split_block`); the info holds num_warps / num_stages / grid."""
    import jax
    import jax.numpy as jnp
    from jax._src.pallas.triton import pallas_call_registration as reg

    from pallas_kernels import conv_first_block, cuda_export_target

    captured: list[str] = []
    orig = reg.lowering.lower_jaxpr_to_triton_module

    def hook(*a, **kw):
        res = orig(*a, **kw)
        captured.append(res.module.operation.get_asm(enable_debug_info=False))
        return res

    params = _param_specs(cfg)
    x = jax.ShapeDtypeStruct((cfg.N, cfg.H, cfg.W, cfg.C), jnp.dtype(cfg.dtype))
    infos: list[dict[str, Any]] = []

    def f(x_, p_):
        return conv_first_block(x_, p_, kernel_size=cfg.k, group_width=cfg.gw, norm=cfg.norm,
                                activation=cfg.act, interpret=False)

    reg.lowering.lower_jaxpr_to_triton_module = hook
    try:
        with cuda_export_target():  # jax 0.11 lowers for a named GPU
            exported = jax.export.export(
                jax.jit(f), platforms=["cuda"],
                disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(
                    x, params)
        text = exported.mlir_module()
        found = {key: [int(v) for v in re.findall(rf"\b{key} = (\d+) : i32", text)]
                 for key in ("num_warps", "num_stages", "grid_x", "grid_y", "grid_z")}
        infos = [dict(zip(found, values)) for values in zip(*found.values())]
    except RuntimeError:  # a jaxlib that compiles Triton while lowering: module was captured
        if not captured:
            raise
    finally:
        reg.lowering.lower_jaxpr_to_triton_module = orig
    if not captured or len(infos) != len(captured):
        raise RuntimeError(f"{len(captured)} Triton modules but {len(infos)} launch configs "
                           "(grid_x, num_warps, ...) in the exported backend configs")
    return list(zip(captured, infos))


def _triton_tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def run_ttir_passes(path: str) -> str:
    """The TTIR passes of Triton's ``make_ttir`` (inliner, canonicalize, combine ops -- e.g.
    ``acc + dot(a, b)`` into one dot with ``acc`` as accumulator --, reorder broadcast, CSE,
    symbol DCE, loop unroll) on the TTIR file at ``path``; returns the module text.

    ``triton.compile`` of a ``.ttir`` file starts at the TTGIR stage, but XLA runs these
    passes on a Pallas kernel's Triton module first (``MakeTTIR`` in
    xla/backends/gpu/codegen/triton/compilation_pipeline_cuda.cc, "based on make_ttir()"),
    so the static compile runs them too."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    ctx = ir.context()
    ir.load_dialects(ctx)
    CUDABackend(GPUTarget("cuda", 90, 32)).load_dialects(ctx)
    mod = ir.parse_mlir_module(path, ctx)
    mod.context = ctx
    CUDABackend.make_ttir(mod, None, None, 90)
    return str(mod)


def compile_sm90(ttir: str, num_warps: int, num_stages: int, workdir: str,
                 tag: str) -> dict[str, Any]:
    """Compiles TTIR for sm_90a with pip triton; ptxas -v and SASS. Needs triton."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    raw = os.path.join(workdir, f"{tag}.pallas.ttir")  # as Pallas emitted it
    pathlib.Path(raw).write_text(ttir)
    path = os.path.join(workdir, f"{tag}.ttir")  # after the TTIR passes: what is compiled
    pathlib.Path(path).write_text(run_ttir_passes(raw))
    kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    for ext in ("ttgir", "ptx"):
        pathlib.Path(workdir, f"{tag}.{ext}").write_text(kernel.asm[ext])
    cubin = os.path.join(workdir, f"{tag}.cubin")
    pathlib.Path(cubin).write_bytes(kernel.asm["cubin"])
    ptxas = get_ptxas(90)
    res = subprocess.run([ptxas.path, "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
                          os.path.join(workdir, f"{tag}.ptx"), "-o",
                          os.path.join(workdir, "ptxas.o")], capture_output=True, text=True)
    out = dict(ptxas_version=str(ptxas.version), dyn_smem=int(kernel.metadata.shared),
               **parse_ptxas_log(res.stdout + res.stderr))
    sass = subprocess.run([_triton_tool("nvdisasm"), "-c", cubin], capture_output=True,
                          text=True, check=True).stdout
    pathlib.Path(workdir, f"{tag}.sass").write_text(sass)
    out["sass"] = sass
    out["ptx_wgmma"] = len(re.findall(r"wgmma\.mma_async", kernel.asm["ptx"]))
    out["ptx_mma_sync"] = len(re.findall(r"\bmma\.sync", kernel.asm["ptx"]))
    return out


def parse_ptxas_log(log: str) -> dict[str, int | None]:
    """Registers, spill bytes and static shared memory from ``ptxas -v`` output."""
    m = re.search(r"Used (\d+) registers", log)
    out: dict[str, int | None] = dict(regs=int(m.group(1)) if m else None)
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                  log)
    out["stack"], out["spill_st"], out["spill_ld"] = (map(int, m.groups()) if m
                                                      else (None, None, None))
    m = re.search(r"(\d+) bytes smem", log)
    out["static_smem"] = int(m.group(1)) if m else 0
    return out


# ------------------------------------------------------------------------------ one row
def analyse(cfg: StaticConfig, hw: H100Model, workdir: str) -> dict[str, Any]:
    """Every number of the report for one configuration (needs jax's Triton lowering and
    triton): the fused plan's one kernel, or the split plan's two or three summed
    (:func:`analyse_split`)."""
    t0 = time.time()
    modules = export_triton_modules(cfg)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", cfg.name).strip("_") + f"_N{cfg.N}"
    if len(modules) > 1:
        row = analyse_split(cfg, hw, workdir, modules, tag)
    else:
        row = _analyse_fused(cfg, hw, workdir, *modules[0], tag)
    row["seconds"] = time.time() - t0
    return row


def _analyse_fused(cfg: StaticConfig, hw: H100Model, workdir: str, ttir: str,
                   info: dict[str, Any], tag: str) -> dict[str, Any]:
    """The report row of the fused plan (one kernel, :mod:`pallas_kernels.fused_block`)."""
    from pallas_kernels.conv_stage import conv_loop_trips
    from pallas_kernels.fused_block import block_launch_config
    from pallas_kernels.tuning import padded_channels

    lc = block_launch_config((cfg.N, cfg.H, cfg.W, cfg.C), cfg.dtype, _param_specs(cfg),
                             cfg.k, cfg.gw)
    parts = lc.hidden_parts
    info = dict(info, tile=lc.tile, hidden_chunk=lc.hidden_chunk, hidden_parts=parts,
                plan="fused")
    comp = compile_sm90(ttir, info["num_warps"], info["num_stages"], workdir, tag)
    sass = comp.pop("sass")
    instrs, labels = parse_sass(sass)
    row: dict[str, Any] = dict(cfg=cfg.name, config=dataclasses.asdict(cfg), **info, **comp)
    grid = info["grid_x"] * info.get("grid_y", 1) * info.get("grid_z", 1)
    smem = comp["dyn_smem"] + comp["static_smem"]
    occ = occupancy(comp["regs"] or 255, smem, info["num_warps"], hw)
    row.update(occ, grid=grid, smem_kib=smem / 1024, waves=waves(grid, occ["ctas_per_sm"], hw))
    # batch 1: the launch rule shrinks the tile and may split the hidden dim over parts
    # (fused_grid_n1); this kernel's CTAs/SM assumed (a smaller tile needs fewer registers)
    lc1, grid_n1 = fused_grid_n1(cfg)
    row.update(tile_n1=lc1.tile, hidden_parts_n1=lc1.hidden_parts, grid_n1=grid_n1,
               waves_n1=waves(grid_n1, occ["ctas_per_sm"], hw))
    row["pix_util"] = cfg.N * cfg.H * cfg.W / (info["grid_x"] * info["tile"])
    cp = padded_channels(cfg.C)
    hp = math.ceil(cfg.E * cfg.C / (lc.hidden_chunk * parts)) * lc.hidden_chunk * parts
    row.update(floors(cfg, hw))

    counts, loop_info = dynamic_counts(instrs, labels,
                                       mlp_trips=hp // (lc.hidden_chunk * parts),
                                       conv_trips=conv_loop_trips(cfg.k, cfg.gw))
    row["loops"] = loop_info
    warps_total = info["num_warps"] * grid
    # per program: its part's w1 / w2 chunks, the conv weights and the vectors
    weight_bytes = (2 * cp * (hp // parts) * cfg.itemsize + cfg.k * cfg.k * cfg.gw * cp * 4
                    + (5 * cp + hp // parts) * 4)
    # every part reads its tile's x rows (and recomputes the conv + norm)
    l2_total = parts * l2_bytes(cfg, info["tile"], info["grid_x"], weight_bytes)
    l2 = dict(conv=l2_total - grid * weight_bytes, mlp=grid * weight_bytes)
    hbm = row["fused_mb"] * 1e6
    reduce = parts_reduction(cfg, parts, hw)
    if parts > 1:  # the kernel writes f32 partials instead of out, XLA sums them
        hbm += reduce["kernel_extra_bytes"]
    model = pipe_model(counts, warps_total, l2, hbm, hw)
    row.update(l2_mb=l2_total / 1e6, l2_weight_mb=l2["mlp"] / 1e6, hbm_mb=hbm / 1e6,
               reduce_mb=reduce["bytes"] / 1e6, reduce_us=reduce["us"],
               model_overlap_us=model["overlap_s"] * 1e6 + reduce["us"],
               model_serial_us=model["serial_s"] * 1e6 + reduce["us"],
               model_waves_us=wave_quantized(model["overlap_s"] * 1e6, row["waves"])
               + reduce["us"],
               bottleneck=model["bottleneck"], pipe_us=model["pipe_us"],
               phase_us=model["phase_us"], phase_bound=model["phase_bound"])
    row["pct_floor_overlap"] = row["floor_us"] / row["model_overlap_us"]
    row["pct_floor_serial"] = row["floor_us"] / row["model_serial_us"]
    row["vs_xla_floor"] = row["model_overlap_us"] / row["xla_floor_us"]
    # MLP tensor work: the MLP loop's; when Triton unrolled that loop away (few chunks) the
    # phases cannot be told apart, so all tensor-core work counts (the conv's included)
    has_mlp_loop = any(lp["kind"] == "mlp" for lp in loop_info)
    row["mlp_loop_found"] = has_mlp_loop
    tc_phases = ("mlp",) if has_mlp_loop else tuple(counts)
    exec_tc = sum(counts[p]["tc_flops_" + op] for p in tc_phases for op in MMA_OPS) * warps_total
    useful_tc = 2 * cfg.N * cfg.H * cfg.W * 2 * cfg.C * cfg.E * cfg.C
    row["tc_useful"] = useful_tc / exec_tc if exec_tc else 0.0
    ops = Counter()
    for ins in instrs:
        ops[ins.op] += 1
    row["mma"] = (f"wgmma x{ops['HGMMA']}" if ops["HGMMA"] else
                  f"mma.sync x{ops['HMMA']}" if ops["HMMA"] else "none")
    lanes = info["num_warps"] * 32
    row["conv_instr_per_mac"] = counts["conv"]["issue"] * lanes / (
        info["tile"] * cfg.k * cfg.k * cfg.gw * cp)
    row["mlp_instr_per_hidden"] = counts["mlp"]["issue"] * lanes / (info["tile"] * hp)
    row["launch"] = (f"{info['tile']}/{info['hidden_chunk']}/{info['num_warps']}/"
                     f"{info['num_stages']}" + (f" x{parts} parts" if parts > 1 else ""))
    return row


def fused_grid_n1(cfg: StaticConfig) -> tuple[Any, int]:
    """(launch config, programs) of the fused kernel for ``cfg`` at batch 1: row tiles times
    hidden parts (:func:`pallas_kernels.tuning.hidden_parts`)."""
    from pallas_kernels.fused_block import block_launch_config

    lc1 = block_launch_config((1, cfg.H, cfg.W, cfg.C), cfg.dtype, _param_specs(cfg),
                              cfg.k, cfg.gw)
    return lc1, math.ceil(cfg.H * cfg.W / lc1.tile) * lc1.hidden_parts


def parts_reduction(cfg: StaticConfig, parts: int, hw: H100Model) -> dict[str, float]:
    """The cost of a hidden dim split over ``parts`` programs per tile
    (:func:`pallas_kernels.mlp_stage.sum_parts_epilogue`, XLA after the kernel): the kernel
    writes ``parts`` f32 (rows, Cp) partials instead of out ("kernel_extra_bytes", HBM); the
    reduction reads them and x and writes out ("bytes"), charged at HBM bandwidth ("us",
    one fusion, latency ignored). All 0 for ``parts`` = 1."""
    from pallas_kernels.tuning import padded_channels

    if parts <= 1:
        return dict(kernel_extra_bytes=0.0, bytes=0.0, us=0.0)
    m = cfg.N * cfg.H * cfg.W
    partials = parts * m * padded_channels(cfg.C) * 4
    red = partials + 2 * m * cfg.C * cfg.itemsize
    return dict(kernel_extra_bytes=partials - m * cfg.C * cfg.itemsize, bytes=red,
                us=red / hw.hbm_bw * 1e6)


def split_kernel_traffic(cfg: StaticConfig, kernel: str, lc: Any, grid: tuple[int, int],
                         cp: int, hp: int) -> tuple[float, float]:
    """(L2 -> SM bytes, HBM bytes) of one kernel of the split plan.

    conv_norm: the x rows its taps touch (:func:`l2_bytes`) plus conv weights / vectors per
    program; HBM x read + y written. GEMMs: per program a (block_m, K) slice of the left
    operand and a (K, block_n) slice of the weights (the project also its residual tile);
    HBM the left operand, the weights and the output once (the project also x). The fused
    MLP kernel ("mlp"): per program its (mlp_block_m, Cp) tile of y and all of w1 and w2
    (Cp x Hp each), plus the residual tiles; HBM y, the weights, x and the output once (h
    stays on chip).
    """
    from pallas_kernels.split_block import conv_norm_pixels

    m = cfg.N * cfg.H * cfg.W
    item = cfg.itemsize
    programs = grid[0] * grid[1]
    if kernel == "conv_norm":
        per_program = cfg.k * cfg.k * cfg.gw * cp * 4 + 3 * cp * 4
        pixels = conv_norm_pixels(cfg.W, lc.conv_tile, cfg.k, cfg.gw)
        # grid[1] channel blocks: each reads its channels' share of the rows and weights
        return (l2_bytes(cfg, pixels, grid[0], per_program),
                m * cfg.C * item + m * cp * item)
    if kernel == "mlp":
        l2 = programs * (lc.mlp_block_m * cp + 2 * cp * hp) * item + m * cfg.C * item
        hbm = (m * cp + 2 * cp * hp + 2 * m * cfg.C) * item
        return l2, hbm
    k_dim, n_dim = (cp, hp) if kernel == "expand" else (hp, cp)
    block_n = n_dim // grid[1]
    l2 = programs * (lc.block_m * k_dim + k_dim * block_n) * item
    hbm = (m * k_dim + k_dim * n_dim + m * n_dim) * item
    if kernel == "project":
        l2 += m * cfg.C * item
        hbm += m * cfg.C * item
    return l2, hbm


def split_grids(cfg: StaticConfig, lc: Any, rows: int) -> tuple[int, int, dict[str, int]]:
    """(padded hidden of the GEMMs, of the fused MLP kernel, programs per kernel) of the split
    plan with launch parameters ``lc`` for ``rows`` pixels, every kernel either form has."""
    from pallas_kernels.operands import round_up
    from pallas_kernels.split_block import conv_norm_pixels
    from pallas_kernels.tuning import conv_channel_blocks, gemm_block_n, padded_channels

    cp = padded_channels(cfg.C)
    blocks = conv_channel_blocks(lc, cfg.dtype, cfg.gw, cfg.norm, cp // 16)
    hidden = cfg.E * cfg.C
    expand_n = gemm_block_n(lc.expand_block_n, lc.block_m, rows, hidden)
    project_n = gemm_block_n(lc.block_n, lc.block_m, rows, cp)
    hp_gemm = round_up(hidden, max(expand_n, lc.block_k))
    grid_m = math.ceil(rows / lc.block_m)
    return hp_gemm, round_up(hidden, lc.hidden_chunk), dict(
        conv_norm=math.ceil(rows / conv_norm_pixels(cfg.W, lc.conv_tile, cfg.k, cfg.gw))
        * blocks,
        expand=grid_m * (hp_gemm // expand_n),
        project=grid_m * (cp // project_n), mlp=math.ceil(rows / lc.mlp_block_m))


def analyse_split(cfg: StaticConfig, hw: H100Model, workdir: str,
                  modules: Sequence[tuple[str, dict[str, Any]]], tag: str) -> dict[str, Any]:
    """The report row of the split plan (:mod:`pallas_kernels.split_block`): each kernel
    (conv + norm, then the fused MLP kernel or the expand and project GEMMs:
    :func:`pallas_kernels.split_block.split_kernels`) compiled and modelled like the fused
    one, run back to back, so the block's "overlap" / "serial" times are the sums of the
    kernels' (the conv + norm kernel is the "conv" phase, the rest the "mlp" phase);
    registers / shared memory are the largest, CTAs per SM and waves the smallest of the
    kernels. Batch 1 ("N=1 waves") takes its own launch parameters, maybe the other MLP
    form or the fused kernel with hidden parts (:func:`pallas_kernels.tuning.block_plan`,
    :func:`fused_grid_n1`): a kernel of it not compiled here counts 1 CTA per SM."""
    from pallas_kernels.conv_stage import conv_loop_trips
    from pallas_kernels.split_block import split_kernels, split_launch
    from pallas_kernels.tuning import block_plan, padded_channels

    specs = _param_specs(cfg)
    lc = split_launch((cfg.N, cfg.H, cfg.W, cfg.C), cfg.dtype, specs, cfg.k, cfg.gw, cfg.norm)
    lc1 = split_launch((1, cfg.H, cfg.W, cfg.C), cfg.dtype, specs, cfg.k, cfg.gw, cfg.norm)
    names = split_kernels(lc)
    if len(modules) != len(names):
        raise RuntimeError(f"split plan: expected {len(names)} kernels {names}, got "
                           f"{len(modules)}")
    cp = padded_channels(cfg.C)
    hp_gemm, hp_mlp, _ = split_grids(cfg, lc, cfg.N * cfg.H * cfg.W)
    _, _, grids_n1 = split_grids(cfg, lc1, cfg.H * cfg.W)
    conv_trips = conv_loop_trips(cfg.k, cfg.gw)
    trips = dict(conv_norm=conv_trips, expand=cp // lc.block_k, project=hp_gemm // lc.block_k,
                 mlp=hp_mlp // lc.hidden_chunk)
    row: dict[str, Any] = dict(cfg=cfg.name, config=dataclasses.asdict(cfg), plan="split",
                               kernel_names=list(names), **dataclasses.asdict(lc))
    row.update(floors(cfg, hw))
    kernels = []
    for name, (ttir, info) in zip(names, modules):
        comp = compile_sm90(ttir, info["num_warps"], info["num_stages"], workdir,
                            f"{tag}_{name}")
        instrs, labels = parse_sass(comp.pop("sass"))
        grid = (info["grid_x"], info.get("grid_y", 1))
        smem = comp["dyn_smem"] + comp["static_smem"]
        occ = occupancy(comp["regs"] or 255, smem, info["num_warps"], hw)
        counts, loop_info = dynamic_counts(instrs, labels, mlp_trips=trips[name],
                                           conv_trips=trips[name] if name == "conv_norm"
                                           else 1)
        if name == "conv_norm":  # one phase: whichever loop the conv has, all of it is conv
            for phase in ("mlp", "rest"):
                counts["conv"].update(counts[phase])
                counts[phase] = Counter()
        l2, hbm = split_kernel_traffic(cfg, name, lc, grid, cp,
                                       hp_mlp if name == "mlp" else hp_gemm)
        phase = "conv" if name == "conv_norm" else "mlp"
        warps_total = info["num_warps"] * grid[0] * grid[1]
        model = pipe_model(counts, warps_total, {phase: l2}, hbm, hw)
        ops = Counter(ins.op for ins in instrs)
        exec_tc = sum(counts[p]["tc_flops_" + op] for p in counts for op in MMA_OPS
                      ) * warps_total
        kernels.append(dict(
            kernel=name, **info, **comp, **occ, smem_kib=smem / 1024, grid=grid[0] * grid[1],
            block_n=dict(expand=hp_gemm, project=cp, mlp=cp).get(name, 0) // grid[1],
            waves=waves(grid[0] * grid[1], occ["ctas_per_sm"], hw), loops=loop_info,
            l2_mb=l2 / 1e6, hbm_mb=hbm / 1e6, exec_tc_flops=exec_tc,
            hgmma=ops["HGMMA"], hmma=ops["HMMA"],
            model_overlap_us=model["overlap_s"] * 1e6,
            model_serial_us=model["serial_s"] * 1e6, bottleneck=model["bottleneck"],
            pipe_us=model["pipe_us"]))
        kernels[-1]["model_waves_us"] = wave_quantized(kernels[-1]["model_overlap_us"],
                                                       kernels[-1]["waves"])
    ctas = {k["kernel"]: k["ctas_per_sm"] for k in kernels}
    names_n1 = split_kernels(lc1)
    fused_n1 = block_plan(cp, cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype,
                          rows=cfg.H * cfg.W) == "fused"
    for k in kernels:
        k["waves_n1"] = (waves(grids_n1[k["kernel"]], k["ctas_per_sm"], hw)
                         if k["kernel"] in names_n1 and not fused_n1 else None)
    if fused_n1:  # batch 1 is too small for the split plan: the fused kernel, hidden parts
        names_n1 = ("fused",)
        waves_n1 = waves(fused_grid_n1(cfg)[1], 1, hw)
    else:
        waves_n1 = min(waves(grids_n1[name], ctas.get(name, 1), hw) for name in names_n1)
    conv, mlps = kernels[0], kernels[1:]
    pipes = sorted({p for k in kernels for p in k["pipe_us"]})
    if lc.fused_mlp:
        mlp_launch = (f"mlp m{lc.mlp_block_m} hc{lc.hidden_chunk} {lc.mlp_warps}w "
                      f"{lc.mlp_stages}s")
    else:
        mlp_launch = (f"gemm m{lc.block_m} n{kernels[1]['block_n']}/{kernels[2]['block_n']} "
                      f"(split {lc.expand_split}/{lc.column_split}) k{lc.block_k} "
                      f"{lc.num_warps}w {lc.num_stages}s")
    row.update(
        kernels=kernels,
        launch=f"split: conv {lc.conv_tile}/{lc.conv_warps}w; {mlp_launch}",
        regs=max(k["regs"] or 0 for k in kernels),
        spill_st=sum(k["spill_st"] or 0 for k in kernels),
        spill_ld=sum(k["spill_ld"] or 0 for k in kernels),
        smem_kib=max(k["smem_kib"] for k in kernels),
        ctas_per_sm=min(k["ctas_per_sm"] for k in kernels),
        limiter="/".join(k["limiter"] for k in kernels),
        grid=sum(k["grid"] for k in kernels),
        waves=min(k["waves"] for k in kernels), waves_n1=waves_n1,
        kernel_names_n1=list(names_n1),
        l2_mb=sum(k["l2_mb"] for k in kernels),
        hbm_mb=sum(k["hbm_mb"] for k in kernels),
        model_overlap_us=sum(k["model_overlap_us"] for k in kernels),
        model_serial_us=sum(k["model_serial_us"] for k in kernels),
        model_waves_us=sum(k["model_waves_us"] for k in kernels),
        pipe_us={p: sum(k["pipe_us"].get(p, 0.0) for k in kernels) for p in pipes},
        phase_us=dict(conv=dict(conv["pipe_us"]),
                      mlp={p: sum(k["pipe_us"].get(p, 0.0) for k in mlps) for p in pipes}),
        phase_bound=dict(conv=conv["bottleneck"],
                         mlp="+".join(k["bottleneck"] for k in mlps)),
        mma=(f"wgmma x{sum(k['hgmma'] for k in mlps)}" if all(k["hgmma"] for k in mlps)
             else f"mma.sync x{sum(k['hmma'] for k in mlps)}"))
    slowest = max(kernels, key=lambda k: k["model_overlap_us"])
    row["bottleneck"] = slowest["kernel"] + ":" + slowest["bottleneck"]
    useful_tc = 2 * cfg.N * cfg.H * cfg.W * 2 * cfg.C * cfg.E * cfg.C
    exec_tc = sum(k["exec_tc_flops"] for k in mlps)
    row["tc_useful"] = useful_tc / exec_tc if exec_tc else 0.0
    row["pct_floor_overlap"] = row["floor_us"] / row["model_overlap_us"]
    row["pct_floor_serial"] = row["floor_us"] / row["model_serial_us"]
    row["vs_xla_floor"] = row["model_overlap_us"] / row["xla_floor_us"]
    return row


# ------------------------------------------------------------------------------ sweeps
@contextlib.contextmanager
def launch_row(table: dict, key: tuple, config: Any):
    """Within the block, ``table[key]`` is ``config`` (a candidate launch row the launch sweeps
    in ``scripts/`` model with :func:`analyse`); afterwards the committed row, or none, is back."""
    shipped = table.get(key)
    table[key] = config
    try:
        yield
    finally:
        if shipped is None:
            table.pop(key, None)
        else:
            table[key] = shipped


# ------------------------------------------------------------------------------ output
def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The key columns, one row per configuration."""
    head = ("| block | launch (fused: tile/HC/warps/stages) | grid | regs | spill | smem KiB | CTA/SM | waves "
            "| N=1 waves | MMA (useful) | conv µs | mlp µs | model µs overlap / serial | "
            "floor µs | % floor ovl / ser | XLA floor µs | bottleneck |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cfg']} | ERROR: {r['error'][:120]} |" + " |" * 15)
            continue
        ph, pb = r["phase_us"], r["phase_bound"]
        lines.append(
            f"| {r['cfg']} | {r['launch']} "
            f"| {r['grid']} | {r['regs']} | {r['spill_st']}/{r['spill_ld']} "
            f"| {r['smem_kib']:.1f} | {r['ctas_per_sm']} ({r['limiter']}) | {r['waves']:.2f} "
            f"| {r['waves_n1']:.2f} | {r['mma']} ({100 * r['tc_useful']:.0f} %) "
            f"| {max(ph['conv'].values()):.0f} ({pb['conv']}) "
            f"| {max(ph['mlp'].values()):.0f} ({pb['mlp']}) "
            f"| {r['model_overlap_us']:.0f} / {r['model_serial_us']:.0f} | {r['floor_us']:.1f} "
            f"| {100 * r['pct_floor_overlap']:.0f} / {100 * r['pct_floor_serial']:.0f} "
            f"| {r['xla_floor_us']:.0f} | {r['bottleneck']} |")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """Versions and date the report is labelled with."""
    import jax
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               jax=jax.__version__, label=STATIC_LABEL, target="sm_90a (H100)")
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convfirst_jax.bench static",
        description="Static H100 report of the fused conv-first block: compiles the kernel for "
                    "sm_90 without a GPU (needs the 'static' extra: triton) and models it.")
    p.add_argument("--preset", choices=("brief", "none"), default=None,
                   help="brief: the 24 configurations of issue 9 (default without --config)")
    p.add_argument("--config", action="append", default=[],
                   help="C=..,HW=..,k=..,gw=1|8,norm=layernorm|affine,act=..,ls=0|1,N=..,"
                        "dtype=..,E=.. (repeatable)")
    p.add_argument("--batch", type=int, default=128, help="N (default 128)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPE_NAMES)
    p.add_argument("--json", default=None, help="write all rows to this JSON file")
    p.add_argument("--markdown", default=None, help="write the key table to this file")
    p.add_argument("--keep", default=None, help="directory for TTIR/TTGIR/PTX/cubin/SASS")
    p.add_argument("--peak-tflops", type=float, default=H100Model.peak_flops / 1e12)
    p.add_argument("--hbm-tbs", type=float, default=H100Model.hbm_bw / 1e12)
    p.add_argument("--l2-tbs", type=float, default=H100Model.l2_bw / 1e12)
    p.add_argument("--clock-ghz", type=float, default=H100Model.clock / 1e9)
    return p


def run(configs: Sequence[StaticConfig], hw: H100Model | None = None,
        workdir: str | None = None, verbose: bool = False) -> list[dict[str, Any]]:
    """One report row per configuration (errors become rows with an "error" key)."""
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(why)
    hw = hw or H100Model()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                           "convfirst-static-triton"))
    workdir = workdir or tempfile.mkdtemp(prefix="convfirst-static-")
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for cfg in configs:
        try:
            rows.append(analyse(cfg, hw, workdir))
        except Exception as e:  # noqa: BLE001 - report the failure in the table, go on
            rows.append(dict(cfg=cfg.name, error=f"{type(e).__name__}: {e}"))
        if verbose:
            r = rows[-1]
            print(f"  {cfg.name} N={cfg.N}: " + (r["error"][:200] if "error" in r else
                  f"{r['model_overlap_us']:.0f} us overlap, {r['seconds']:.1f} s"), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m convfirst_jax.bench static ...``"""
    args = build_parser().parse_args(argv)
    defaults = dict(N=args.batch, dtype=args.dtype)
    try:
        configs = [parse_config(c, **defaults) for c in args.config]
    except (ValueError, TypeError) as e:
        raise SystemExit(f"static: bad --config: {e}") from None
    if args.preset == "brief" or (not configs and args.preset is None):
        configs = brief_configs(args.batch, args.dtype) + configs
    ok, why = triton_available()
    if not ok:
        raise SystemExit(f"static: {why}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    hw = H100Model(peak_flops=args.peak_tflops * 1e12, hbm_bw=args.hbm_tbs * 1e12,
                   l2_bw=args.l2_tbs * 1e12, clock=args.clock_ghz * 1e9)
    rows = run(configs, hw, args.keep, verbose=True)
    env = environment()
    table = markdown_table(rows)
    print(f"{env['label']}: {env['target']}, jax {env['jax']}, triton {env['triton']}, "
          f"{env['date']}")
    print(table)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            dict(environment=env, hardware=dataclasses.asdict(hw), rows=rows), indent=1,
            default=str))
    if args.markdown:
        pathlib.Path(args.markdown).write_text(
            f"# Fused block on H100: {env['label']}\n\n{env['date']}, jax {env['jax']}, "
            f"triton {env['triton']}, target {env['target']}.\n\n{table}\n")
    return 1 if any("error" in r for r in rows) else 0
