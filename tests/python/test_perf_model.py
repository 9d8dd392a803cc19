"""The performance model's structure and invariants (benchmarks/perf_model.py, docs/performance.md).

No torch and no GPU: the model is plain Python. These tests check what must hold whatever the priors are
(terms named, the bound is the largest term, no prediction above the physical cap or the floor, removing a
cost never slows a kernel down, the cuBLAS calibration reproduces cuBLAS), not the predicted numbers.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("perf_model", os.path.join(ROOT, "benchmarks", "perf_model.py"))
pm = importlib.util.module_from_spec(_spec)
sys.modules["perf_model"] = pm
_spec.loader.exec_module(pm)

RECS = pm.records()
H100 = [r for r in RECS if r["device"] == pm.H100.name]
A100 = [r for r in RECS if r["device"] == pm.A100.name]
EPS = 1e-9


def test_records_cover_every_shape_sparsity_device():
    shapes = {(r["M"], r["K"], r["N"]) for r in RECS}
    for k, n in pm.BERT + pm.LLM:
        assert (pm.LARGE_M, k, n) in shapes
    for m in pm.SMALL_M:
        assert (m, 4096, 14336) in shapes
    for dev in (H100, A100):
        assert {r["sparsity"] for r in dev} == set(pm.SPARSITIES)
        assert len(dev) == len(shapes) * len(pm.SPARSITIES)


def test_existing_fields_kept():
    for r in RECS:
        for key in ("device", "M", "K", "N", "sparsity", "cap", "dense_us", "v2_us", "speedup", "bound", "q_l2",
                    "io_bytes", "floor_speedup"):
            assert key in r
        if r["M"] >= 4096:
            for key in ("gv_v1_speedup", "gv_v1_bound", "gv_v2_speedup", "gv_v2_bound"):
                assert key in r


def test_sm90_fields_on_h100_none_on_a100():
    for r in H100:
        assert r["sm90_speedup"] > 0 and r["sm90u_speedup"] > 0
        assert isinstance(r["sm90_bound"], str) and isinstance(r["sm90u_bound"], str)
        assert set(r["sm90_terms"]) <= set(pm.SM90_TERMS) and set(r["sm90u_terms"]) <= set(pm.SM90_TERMS)
    for r in A100:  # no wgmma / TMA multicast: not applicable
        for key in ("sm90_speedup", "sm90_bound", "sm90_terms", "sm90u_speedup", "sm90u_bound", "sm90u_terms"):
            assert r[key] is None


@pytest.mark.parametrize("design", ["sm90", "sm90u"])
def test_bound_is_the_largest_named_term_and_time_is_their_combination(design):
    for r in H100:
        terms = r[f"{design}_terms"]
        assert r[f"{design}_bound"] == max(terms, key=terms.get)
        assert all(v >= 0 for v in terms.values())
        thr = max(v for key, v in terms.items() if key not in ("launch", "tail"))
        t = thr + terms.get("launch", 0.0) + terms.get("tail", 0.0)
        assert math.isclose(t, r[f"{design}_us"], rel_tol=1e-3, abs_tol=2e-3)
        assert math.isclose(r["dense_us"] / r[f"{design}_us"], r[f"{design}_speedup"], rel_tol=1e-9)


def test_no_prediction_exceeds_the_floor_or_the_cap():
    for r in RECS:
        assert r["floor_speedup"] <= r["cap"] * (1 + EPS)
        preds = [r["speedup"]] + [r[k] for k in ("sm90_speedup", "sm90u_speedup") if r.get(k) is not None]
        for p in preds:
            assert p <= r["cap"] * (1 + EPS), r
        for key in ("sm90_speedup", "sm90u_speedup"):
            if r.get(key) is not None:
                assert r[key] <= r["floor_speedup"] * (1 + EPS), (key, r)
        for key in ("gv_v1_speedup", "gv_v2_speedup", "gv_sm90_speedup", "gv_sm90u_speedup", "gi_sm90_speedup"):
            if key in r:
                assert 0 < r[key] <= r["cap"] * (1 + EPS), (key, r)


def test_bars_follow_the_issue():
    for r in H100:
        bar = r["sm90_bar"]
        if r["M"] >= 4096 and r["sparsity"] == 0.75:
            assert math.isclose(bar, 0.85 * r["cap"])
        elif r["M"] >= 4096 and r["sparsity"] == 0.5:
            assert math.isclose(bar, 0.8 * r["cap"])
        elif r["M"] <= 64 and (r["K"], r["N"]) == (4096, 14336) and r["sparsity"] == 0.75:
            assert bar == 3.0
        else:
            assert bar is None
        if bar is not None:
            assert r["sm90_meets"] == (r["sm90_speedup"] >= bar)
            assert r["sm90u_meets"] == (r["sm90u_speedup"] >= bar)


def test_removing_a_cost_never_slows_down():
    for r in H100:
        sens = r["sm90_sensitivity"]
        base = r["sm90_speedup"]
        assert sens["no_wgmma_reads"] >= base - 1e-3
        assert sens["eta1"] >= base - 1e-3
        assert sens["sm90u_no_wgmma_reads"] >= r["sm90u_speedup"] - 1e-3
        if r["M"] > 64:
            assert sens["panel_order"] >= base - 1e-3
        else:
            assert sens["pdl"] >= sens["dsmem_reduce"] - 1e-3  # pdl is modelled on the dsmem-reduce variant
            assert sens["rank_reduce"] >= base - 1e-3          # a smaller tail than the whole group's
            assert sens["sm90u_pdl"] >= r["sm90u_speedup"] - 1e-3


def test_eta_pipe_reproduces_cublas():
    for reads in (True, False):
        util = pm.cublas_sm90_smem_util(reads)
        assert math.isclose(pm.H100.peak * pm.eta_pipe(pm.H100, reads) / max(1.0, util), pm.H100.dense)
    # cuBLAS's 128x256 mainloop needs 128 B/clk at peak under the prior that wgmma's reads count
    assert math.isclose(pm.cublas_sm90_smem_util(True), 1.0)


def test_gather_simulation_bounds():
    for d in (0.5, 0.25, 0.1):
        st = pm.gather_stats(d, 1)
        # 1024 2-byte elements per m64k16 over 32 lanes: at least 32 wavefronts, at most 4 per load (4 features)
        assert 32 <= st["wavefronts"] <= 4 * 32 * st["passes"] + 1e-9
        assert st["passes"] >= 1 and st["ldmatrix"] == 0
        assert abs(st["density"] - d) < 0.02
        perm = pm.gather_stats(d, 1, permute=True)
        assert 32 <= perm["wavefronts"] <= st["wavefronts"] + 1e-9
        u16 = pm.gather_stats(d, 16)
        assert u16["ldmatrix"] == 1 and u16["wavefronts"] == 16  # ldmatrix.x4: conflict-free under the swizzle


def test_issue_counts_are_named_and_summed():
    st = pm.gather_stats(0.25, 1)
    c = pm.sm90_issue_counts(st, 2, pm.C_A, 0.25)
    parts = {k: v for k, v in c.items() if k != "total"}
    assert set(parts) == {"lds", "pack", "index", "address", "wgmma", "b_ring", "x_ring", "loop"}
    assert math.isclose(sum(parts.values()), c["total"])


def test_markdown_prints_sm90_columns():
    md = pm.markdown(RECS)
    assert "sm90 (A, unit 1)" in md and "sm90u (U, unit 16)" in md and "floor" in md
    rows = [line for line in md.splitlines() if line.startswith(f"| {pm.H100.name} |")]
    assert len(rows) >= len([r for r in H100 if r["sparsity"] in pm.TABLE_SPARSITIES])
    assert pm.terms_table(RECS).count("\n") >= 2


def test_cli_json_is_valid():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "perf_model.py"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert len(data["records"]) == len(RECS)
    assert data["devices"][0]["eta_pipe"] is not None and data["devices"][1]["eta_pipe"] is None


def test_gpu_check_stage_timeouts_fit_one_call():
    """scripts/gpu_check.sh: the default stage timeouts (every ${T_*:-N} use) fit a 9-minute device call."""
    src = open(os.path.join(ROOT, "scripts", "gpu_check.sh")).read()
    uses = [int(v) for v in re.findall(r"\$\{T_[A-Z0-9_]+:=(\d+)\}", src)]
    assert uses, "no stage timeouts found"
    assert sum(uses) <= 540, (sum(uses), uses)


def test_dense_fallback_rule_never_picks_the_slower_path():
    """prefer_dense_backward and gi_sm90_pays (mirrored from tw_bwd_launch.cuh with their sustained rates) against
    the full model: the path they pick is within the 10% margin of the fastest on every bench shape; at 50% on an
    H100 (grad_input v1 0.49x, sm90 0.58-0.74x, grad_values v2 0.75x) it is the dense weight, at 75% grad_input
    on wgmma."""
    for r in RECS:
        if "gi_plan" not in r:
            continue
        gi = dict(dense=r["grad_dense_speedup"], v1=r["gi_v1_speedup"])
        if "gi_sm90_speedup" in r:
            gi["sm90"] = r["gi_sm90_speedup"]
        gv = dict(dense=r["grad_dense_speedup"], v2=r["gv_v2_speedup"])
        for plan, paths in ((r["gi_plan"], gi), (r["gv_plan_unit1"], gv)):
            assert paths[plan] >= 0.9 * max(paths.values()) - EPS, (plan, paths, r["M"], r["K"], r["N"], r["sparsity"])
        if r["device"] == pm.H100.name and r["M"] == pm.LARGE_M:
            if r["sparsity"] == 0.5:
                assert (r["gi_plan"], r["gv_plan_unit1"]) == ("dense", "dense")
            else:   # grad_input on wgmma where a tile keeps >= 20% of K (75%), v1 beyond (90%)
                assert r["gi_plan"] == ("sm90" if r["sparsity"] <= 0.8 else "v1") and r["gv_plan_unit1"] == "v2"
        if r["device"] == pm.A100.name:
            assert r["gi_plan"] in ("dense", "v1")
    # the dense fallback costs the unpack / pack stream: never faster than cuBLAS itself
    assert all(r["grad_dense_speedup"] < 1.0 for r in RECS if "grad_dense_speedup" in r)
