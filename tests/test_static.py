"""Static H100 report (convfirst_jax.bench.static).

The model parts (SASS parsing, loop counting, occupancy, floors, pipe model) are tested on a
small hand-written SASS sample and hand-computed numbers, everywhere. The end-to-end compile
(jax export -> pip triton -> ptxas -> SASS) runs only where the optional triton package is
installed (``pip install -e .[static]``) and skips cleanly elsewhere (CI).
"""

from __future__ import annotations

import math

import pytest

from convfirst_jax.bench import static

# nvdisasm -c style: a prologue, a conv loop (no tensor cores, runs k*k*gw times), an MLP loop
# with wgmma / mma.sync (runs hidden / HC times), an epilogue.
SASS = """
        .text.kern:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
.L_x_0:
        /*0020*/                   IADD3 R8, R8, 0x1, RZ ;
        /*0030*/              @!P0 LDG.E.64 R12, desc[UR4][R10.64] ;
        /*0040*/                   FFMA R20, R12, R13, R20 ;
        /*0050*/                   ISETP.NE.AND P0, PT, R8, 0x9, PT ;
        /*0060*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0070*/                   HGMMA.64x32x16.F32.BF16 R40, R56, gdesc[UR8].tnspB, RZ, !UPT ;
        /*0080*/                   HMMA.16816.F32.BF16 R24, R28, R30, R24 ;
        /*0090*/                   MUFU.EX2 R50, R51 ;
        /*00a0*/                   F2F.BF16.F32 R52, R50 ;
        /*00b0*/                   LDSM.16.M88.X4 R60, [R61] ;
        /*00c0*/               @P1 BRA `(.L_x_1) ;
        /*00d0*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*00e0*/                   EXIT ;
"""


def test_parse_sass_and_classify():
    instrs, labels = static.parse_sass(SASS)
    assert [i.op for i in instrs][:3] == ["S2R", "LDG", "IADD3"]
    assert len(instrs) == 15 and labels == {".L_x_0": 0x20, ".L_x_1": 0x70}
    by_op = {i.op + i.mods: i for i in instrs}
    assert static.classify(by_op["LDG.E.128"]) == ("lsu", 4)
    assert static.classify(by_op["LDG.E.64"]) == ("lsu", 2)
    assert static.classify(by_op["LDSM.16.M88.X4"]) == ("lsu", 4)
    assert static.classify(by_op["FFMA"]) == ("fp32", 0)
    assert static.classify(by_op["MUFU.EX2"]) == ("mufu", 0)
    assert static.classify(by_op["IADD3"]) == ("alu", 0)
    assert by_op["LDG.E.64"].pred == "@!P0"
    # wgmma 64x32x16 per warp = a quarter of the warpgroup's 2*64*32*16; mma 16x8x16
    assert static.mma_flops(by_op["HGMMA.64x32x16.F32.BF16"]) == 2 * 64 * 32 * 16 / 4
    assert static.mma_flops(by_op["HMMA.16816.F32.BF16"]) == 2 * 16 * 8 * 16


def test_dynamic_counts_phases_and_trips():
    instrs, labels = static.parse_sass(SASS)
    assert static.find_loops(instrs, labels) == [(2, 6), (7, 12)]
    counts, loops = static.dynamic_counts(instrs, labels, mlp_trips=4, conv_trips=9)
    assert [lp["kind"] for lp in loops] == ["conv", "mlp"]
    conv, mlp, rest = counts["conv"], counts["mlp"], counts["rest"]
    assert conv["issue"] == 2 + 5 * 9
    assert conv["l1"] == 4 + 2 * 9 and conv["fp32"] == 9 and conv["alu"] == 2 * 9
    assert mlp["issue"] == 6 * 4 and mlp["mufu"] == 4 and mlp["cvt"] == 4
    assert mlp["tc_flops_HGMMA"] == 4 * 2 * 64 * 32 * 16 / 4
    assert mlp["tc_flops_HMMA"] == 4 * 2 * 16 * 8 * 16
    assert rest["issue"] == 2 and rest["l1"] == 4


def test_pipe_model_overlap_and_serial():
    hw = static.H100Model()
    counts, _ = static.dynamic_counts(*static.parse_sass(SASS), mlp_trips=4, conv_trips=9)
    warps = 132 * 8  # 8 warps per SM
    m = static.pipe_model(counts, warps, dict(conv=1e6, mlp=2e6), hbm_bytes=3e6, hw=hw)
    issue_conv = 47 * 8 / 4.0 / hw.clock
    assert math.isclose(m["phase_us"]["conv"]["issue"], issue_conv * 1e6)
    assert math.isclose(m["phase_us"]["mlp"]["l2"], 2e6 / hw.l2_bw * 1e6)
    assert math.isclose(m["pipe_us"]["hbm"], 1.0)  # 3 MB at 3 TB/s
    assert m["overlap_s"] == max(v for v in m["pipe_us"].values()) / 1e6
    assert m["serial_s"] >= m["overlap_s"]


def test_occupancy_and_waves():
    hw = static.H100Model()
    # 159 regs -> 160 per thread -> 5120 per warp; 8 warps -> 40960 per CTA -> 1 CTA/SM
    occ = static.occupancy(159, 80 * 1024, 8, hw)
    assert occ["ctas_per_sm"] == 1 and occ["limiter"] == "regs"
    occ = static.occupancy(64, 100 * 1024, 4, hw)  # smem: 228 KiB // (100 KiB + 1 KiB) = 2
    assert occ["ctas_per_sm"] == 2 and occ["limiter"] == "smem"
    assert static.waves(264, 2, hw) == 1.0
    assert static.waves(10, 0, hw) == math.inf


def test_floors_from_project_costs():
    hw = static.H100Model()
    cfg = static.StaticConfig(64, 56, 56, 7, 1, "layernorm", "gelu", True, 128, "bfloat16")
    f = static.floors(cfg, hw)
    px = 128 * 56 * 56
    macs = px * (49 * 64 + 2 * 64 * 256)
    weights = 49 * 64 + 64 + 2 * 64 + 64 * 256 + 256 + 256 * 64 + 64 + 64  # + LN, layer scale
    nbytes = 2 * px * 64 * 2 + weights * 2
    assert math.isclose(f["floor_us"], max(2 * macs / 800e12, nbytes / 3e12) * 1e6)
    assert math.isclose(f["fused_mb"], nbytes / 1e6)
    assert f["floor_bound"] == "compute"
    # XLA: every layer reads and writes its activations; at least 25 C-wide tensors per pixel
    assert f["xla_floor_us"] > 25 * px * 64 * 2 / 3e12 * 1e6
    assert f["xla_floor_us"] > 10 * f["floor_us"]


def test_l2_bytes_halo():
    cfg = static.StaticConfig(16, 4, 4, 3, N=1, dtype="float32")
    # one tile of 16 pixels covers the image: rows clipped to [0, 16)
    assert static.l2_bytes(cfg, 16, 1, 100) == 16 * 16 * 4 + 100
    # tiles of 4 (one row each): halo 4 + 1 pixels either side, clipped
    rows = [min(15, p + 3 + 5) - max(0, p - 5) + 1 for p in (0, 4, 8, 12)]
    assert static.l2_bytes(cfg, 4, 4, 0) == sum(rows) * 16 * 4


def test_config_parsing_and_brief():
    cfg = static.parse_config("C=128,HW=28,k=3,gw=8,norm=affine,act=silu,ls=0", N=1)
    assert (cfg.C, cfg.H, cfg.W, cfg.k, cfg.gw, cfg.norm, cfg.ls, cfg.N) == (
        128, 28, 28, 3, 8, "affine", False, 1)
    with pytest.raises(ValueError, match="unknown config key"):
        static.parse_config("C=64,foo=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        static.parse_config("C64")
    brief = static.brief_configs()
    assert len(brief) == 24 and len({c.name for c in brief}) == 24
    assert {c.gw for c in brief} == {1, 8}
    assert static.parse_ptxas_log(
        "ptxas info    : Used 159 registers, 0 bytes stack frame, 8 bytes spill stores, "
        "4 bytes spill loads\nptxas info    : Used 159 registers, 16 bytes smem")["regs"] == 159


def test_static_report_end_to_end(tmp_path):
    """Where triton is installed: compile one small configuration for sm_90 and model it."""
    ok, why = static.triton_available()
    if not ok:
        pytest.skip(why)
    rows = static.run([static.parse_config("C=64,HW=14,k=3,N=2")], workdir=str(tmp_path))
    (row,) = rows
    assert "error" not in row, row.get("error")
    assert row["regs"] > 0 and row["ctas_per_sm"] >= 1
    assert row["mma"].startswith(("wgmma", "mma.sync"))
    assert row["model_serial_us"] >= row["model_overlap_us"] > 0
    assert 0 < row["pct_floor_overlap"] <= 1.0
    table = static.markdown_table(rows)
    assert row["cfg"] in table


def test_conv_loop_with_tensor_cores_is_not_the_mlp():
    """Block-diagonal grouped conv: the first loop has MMAs too; the MLP is the last one."""
    sass = SASS.replace("FFMA R20, R12, R13, R20 ;", "HMMA.16816.F32.BF16 R20, R12, R14, R20 ;")
    instrs, labels = static.parse_sass(sass)
    counts, loops = static.dynamic_counts(instrs, labels, mlp_trips=4, conv_trips=9)
    assert [lp["kind"] for lp in loops] == ["conv", "mlp"]
    assert counts["conv"]["tc_flops_HMMA"] == 9 * 2 * 16 * 8 * 16
    assert counts["mlp"]["tc_flops_HMMA"] == 4 * 2 * 16 * 8 * 16
    # without a conv loop (unrolled taps) the only loop with MMAs is the MLP
    _, loops = static.dynamic_counts(instrs, labels, mlp_trips=4, conv_trips=1)
    assert [lp["kind"] for lp in loops] == ["other", "mlp"]


def test_split_kernel_traffic():
    """L2 / HBM bytes of the split plan's kernels, by hand (C512 7x7, batch 128, bf16)."""
    from pallas_kernels.tuning import SplitLaunchConfig

    cfg = static.parse_config("C=512,HW=7,k=3,N=128")
    lc = SplitLaunchConfig(conv_tile=16, block_m=128, block_n=128, block_k=64)
    m, c, hid = 128 * 49, 512, 2048
    l2, hbm = static.split_kernel_traffic(cfg, "expand", lc, (49, 16), c, hid)
    assert l2 == 49 * 16 * (128 * c + c * 128) * 2  # y slice + w1 slice per program
    assert hbm == (m * c + c * hid + m * hid) * 2
    l2, hbm = static.split_kernel_traffic(cfg, "project", lc, (49, 4), c, hid)
    assert l2 == 49 * 4 * (128 * hid + hid * 128) * 2 + m * c * 2  # + the residual tiles
    assert hbm == (m * hid + hid * c + m * c) * 2 + m * c * 2
    l2, hbm = static.split_kernel_traffic(cfg, "conv_norm", lc, (392, 1), c, hid)
    assert hbm == 2 * m * c * 2  # x read, y written
    assert l2 == static.l2_bytes(cfg, 16, 392, 9 * c * 4 + 3 * c * 4)


def test_fused_mlp_kernel_traffic():
    """L2 / HBM bytes of the split plan's fused MLP kernel, by hand (C256 14x14, batch 128,
    bf16, 128-pixel programs): per program its y tile and all of w1 and w2 (1 MiB), the
    residual tiles once; HBM y, the weights, x and out once, no h."""
    from pallas_kernels.tuning import SplitLaunchConfig

    cfg = static.parse_config("C=256,HW=14,k=3,N=128")
    lc = SplitLaunchConfig(conv_tile=32, fused_mlp=True, mlp_block_m=128, hidden_chunk=64)
    m, c, hid = 128 * 196, 256, 1024
    l2, hbm = static.split_kernel_traffic(cfg, "mlp", lc, (196, 1), c, hid)
    assert l2 == 196 * (128 * c + 2 * c * hid) * 2 + m * c * 2
    assert hbm == (m * c + 2 * c * hid + 2 * m * c) * 2
    # against the two GEMMs (128 x 128 expand, 128 x 256 project tiles): 62 % of their L2
    # bytes (231 MB against 373 MB) and h (m x 4C, written and read) off the HBM
    gemm = SplitLaunchConfig(conv_tile=32)
    l2_e, hbm_e = static.split_kernel_traffic(cfg, "expand", gemm, (196, 8), c, hid)
    l2_p, hbm_p = static.split_kernel_traffic(cfg, "project", gemm, (196, 1), c, hid)
    assert l2 / (l2_e + l2_p) == pytest.approx(0.62, abs=0.005)
    assert (hbm_e + hbm_p) - hbm == 2 * m * hid * 2  # h written and read back
    grids = static.split_grids(cfg, lc, m)
    assert grids[1] == hid and grids[2]["mlp"] == 196 and grids[2]["conv_norm"] == 784


def test_wave_quantized():
    assert static.wave_quantized(10.0, 2.0) == 10.0
    assert static.wave_quantized(10.0, 1.48) == pytest.approx(10.0 * 2 / 1.48)
    assert static.wave_quantized(10.0, 0.5) == 20.0  # half the SMs idle
    assert static.wave_quantized(10.0, math.inf) == math.inf  # a CTA does not fit


def test_static_report_of_the_split_plan(tmp_path):
    """Where triton is installed: a wide block compiles as three kernels, modelled back to back."""
    ok, why = static.triton_available()
    if not ok:
        pytest.skip(why)
    # 2560 pixels: the smallest call the split plan takes (tuning.split_small_call)
    (row,) = static.run([static.parse_config("C=256,HW=8,k=3,N=40,norm=affine,act=silu,ls=0")],
                        workdir=str(tmp_path))
    assert "error" not in row, row.get("error")
    assert row["plan"] == "split"
    assert [k["kernel"] for k in row["kernels"]] == ["conv_norm", "expand", "project"]
    assert row["kernel_names_n1"] == ["fused"]  # batch 1: the fused kernel, hidden parts
    assert row["model_overlap_us"] == pytest.approx(
        sum(k["model_overlap_us"] for k in row["kernels"]))
    assert all(k["hgmma"] for k in row["kernels"][1:]), "the GEMMs run wgmma"
    assert row["launch"].startswith("split") and row["cfg"] in static.markdown_table([row])


def test_static_report_of_the_fused_mlp_kernel(tmp_path):
    """Where triton is installed: a C256 call with enough pixels takes the fused MLP kernel
    (conv + norm, then one MLP kernel); batch 1 would take the fused kernel with hidden
    parts."""
    ok, why = static.triton_available()
    if not ok:
        pytest.skip(why)
    (row,) = static.run([static.parse_config("C=256,HW=14,k=3,norm=affine,act=silu,ls=0")],
                        workdir=str(tmp_path))
    assert "error" not in row, row.get("error")
    assert [k["kernel"] for k in row["kernels"]] == ["conv_norm", "mlp"]
    assert row["kernel_names_n1"] == ["fused"]
    assert row["waves_n1"] == pytest.approx(13 * 32 / 132)  # 1 CTA/SM assumed, not compiled
    mlp = row["kernels"][1]
    assert mlp["hgmma"], "the MLP kernel runs wgmma"
    assert [lp["kind"] for lp in mlp["loops"]].count("mlp") == 1  # the hidden-chunk loop
    assert row["model_overlap_us"] == pytest.approx(
        sum(k["model_overlap_us"] for k in row["kernels"]))
    assert row["model_waves_us"] >= row["model_overlap_us"]
    assert row["launch"].startswith("split: conv") and " mlp m" in row["launch"]


def test_parts_reduction():
    """Hidden parts: the kernel writes G f32 (rows, Cp) partials instead of out, and the XLA
    reduction reads them and x and writes out, at HBM bandwidth; nothing for G = 1."""
    hw = static.H100Model()
    cfg = static.parse_config("C=128,HW=28,k=3,N=1")  # bf16
    assert static.parts_reduction(cfg, 1, hw) == dict(kernel_extra_bytes=0.0, bytes=0.0,
                                                      us=0.0)
    red = static.parts_reduction(cfg, 16, hw)
    m = 28 * 28
    assert red["kernel_extra_bytes"] == 16 * m * 128 * 4 - m * 128 * 2
    assert red["bytes"] == 16 * m * 128 * 4 + 2 * m * 128 * 2
    assert red["us"] == pytest.approx(red["bytes"] / hw.hbm_bw * 1e6)


def test_fused_grid_n1_counts_hidden_parts():
    """The N=1 grid of the fused kernel is row tiles x hidden parts (tuning.hidden_parts)."""
    lc, grid = static.fused_grid_n1(static.parse_config("C=128,HW=28,k=3,N=128"))
    assert (lc.tile, lc.hidden_parts, grid) == (16, 16, 49 * 16)
    lc, grid = static.fused_grid_n1(static.parse_config("C=512,HW=7,k=7,N=128"))
    assert (lc.tile, lc.hidden_parts, grid) == (16, 64, 4 * 64)
    lc, grid = static.fused_grid_n1(static.parse_config("C=64,HW=56,k=3,gw=8,N=128"))
    assert (lc.num_warps, lc.hidden_parts, grid) == (8, 1, 196)  # parts do not pay here


def test_static_report_of_hidden_parts(tmp_path):
    """Where triton is installed: a batch-1 call with hidden parts compiles as one kernel
    with a (tiles, parts) grid; its row charges every part's x reads and the reduction."""
    ok, why = static.triton_available()
    if not ok:
        pytest.skip(why)
    (row,) = static.run([static.parse_config("C=128,HW=28,k=3,N=1,norm=affine,act=silu,ls=0")],
                        workdir=str(tmp_path))
    assert "error" not in row, row.get("error")
    assert row["plan"] == "fused" and row["hidden_parts"] == 16
    assert (row["grid_x"], row["grid_y"], row["grid"]) == (49, 16, 784)
    assert row["grid_n1"] == 784 and row["waves_n1"] == row["waves"] > 1
    assert row["reduce_us"] > 0 and row["launch"].endswith("x16 parts")
    assert row["model_overlap_us"] > row["reduce_us"]
    hw = static.H100Model()
    x_rows = static.l2_bytes(static.parse_config("C=128,HW=28,k=3,N=1"), 16, 49, 0)
    assert row["l2_mb"] * 1e6 >= 16 * x_rows  # every part reads its tile's x rows
    assert row["reduce_mb"] * 1e6 / hw.hbm_bw * 1e6 == pytest.approx(row["reduce_us"])
