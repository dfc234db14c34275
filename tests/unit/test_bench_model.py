"""Smoke tests of scripts/bench/bench_model.py: tiny sizes, one repeat, sane numbers (no wall-clock limits)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "bench_model.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_water_frames(bench: ModuleType) -> None:
    base = bench.water_frame(192)
    assert base.n_atoms == 192 and np.count_nonzero(base.numbers == 8) == 64
    big = bench.water_frame(1536)
    assert big.n_atoms == 1536 and np.allclose(big.cell, 2 * base.cell)
    assert np.allclose(big.positions[:192], base.positions) and big.energy == pytest.approx(8 * base.energy)
    small = bench.water_frame(24)
    assert list(small.numbers[:3]) == [8, 1, 1] and np.count_nonzero(small.numbers == 8) == 8
    # each kept hydrogen is bonded to the oxygen before it (O-H about 1 Å, minimum image)
    inv = np.linalg.inv(small.cell)
    for k in range(0, 24, 3):
        d = small.positions[k + 1:k + 3] - small.positions[k]
        d -= np.round(d @ inv) @ small.cell
        assert np.all(np.linalg.norm(d, axis=1) < 1.2)
    with pytest.raises(ValueError, match="500 atoms"):
        bench.water_frame(500)


@pytest.mark.parametrize("preset", ["student", "small"])
def test_run_case_tiny(bench: ModuleType, preset: str) -> None:
    res = bench.run_case(preset, "float32", 24, repeats=1, warmup=0, device="cpu", md_steps=3)
    assert res["md_steps"] == 3 and 0 <= res["md_searches"] <= 3 and res["md_ms"] > 0 and res["md_skin"] > 0
    assert res["n_atoms"] == 24 and res["params"] > 10_000 and res["edges"] > 24
    for key in ("infer_e2e_ms", "infer_model_ms", "infer_e2e_cpu_ms", "train_ms", "train_cpu_ms", "infer_e2e_us_atom",
                "train_us_atom"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["infer_e2e_ms"] >= res["infer_model_ms"]  # e2e contains the model call of the same step
    assert res["infer_e2e_us_atom"] == pytest.approx(1e3 * res["infer_e2e_ms"] / 24)
    assert res["infer_mem_mb"] >= 0 and res["train_mem_mb"] >= res["infer_mem_mb"]
    assert res["compressed"] is (preset == "student")  # only se_e2_a tabulates its embedding for inference


def test_worker_cli_prints_json(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--worker", "student", "float64", "24", "--repeats", "1", "--warmup", "0", "--no-train"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith(bench.RESULT_TAG)][0]
    res = json.loads(line[len(bench.RESULT_TAG):])
    assert res["dtype"] == "float64" and res["preset"] == "student" and "train_ms" not in res
    assert res["infer_e2e_ms"] > 0


def test_deepmd_configs_match_lam_presets(bench: ModuleType) -> None:
    from lam.models.presets import DPA2_PRESETS

    for name in ("small", "medium"):
        cfg = bench.deepmd_dpa2_config(name, "float32")
        ours = DPA2_PRESETS[name]
        rf, ri = cfg["descriptor"]["repformer"], cfg["descriptor"]["repinit"]
        assert rf["nlayers"] == ours["repformer_nlayers"]
        assert rf["update_g2_has_attn"] == ours["update_g2_has_attn"]
        assert (rf["rcut"], rf["nsel"], rf["g1_dim"], rf["g2_dim"]) == (
            ours["repformer_rcut"], ours["repformer_sel"], ours["g1_dim"], ours["g2_dim"])
        assert (ri["rcut"], ri["nsel"], ri["neuron"]) == (
            ours["repinit_rcut"], ours["repinit_sel"], ours["repinit_neuron"])
        assert cfg["fitting_net"]["neuron"] == ours["fitting_neurons"]
        assert cfg["descriptor"]["precision"] == cfg["fitting_net"]["precision"] == "float32"
    with pytest.raises(ValueError, match="large"):
        bench.deepmd_dpa2_config("large")


def _row(code: str, preset: str, n: int, ms: float) -> dict:
    row = {"code": code, "preset": preset, "dtype": "float32", "n_atoms": n, "params": 1000,
           "infer_e2e_ms": ms, "infer_model_ms": 0.8 * ms, "infer_e2e_cpu_ms": 0.5 * ms, "infer_mem_mb": 1.0,
           "infer_e2e_us_atom": 1e3 * ms / n, "infer_model_us_atom": 0.8e3 * ms / n}
    if code == "lam":
        row.update(train_ms=3 * ms, train_cpu_ms=ms, train_us_atom=3e3 * ms / n, train_mem_mb=2.0)
    return row


def test_targets_and_table(bench: ModuleType) -> None:
    results = [
        _row("lam", "small", 192, 50.0), _row("deepmd", "small", 192, 178.0),
        _row("lam", "small", 1536, 500.0), _row("deepmd", "small", 1536, 4400.0),
        _row("lam", "medium", 192, 150.0), _row("lam", "student", 192, 4.0),
    ]
    lines = bench.targets(results)
    text = "\n".join(lines)
    assert "PASS 3.56x faster than DeePMD-kit" in text and "small float32 192 atoms e2e wall" in text
    # 500 ms / 1536 vs 50 ms / 192: 1.25x per atom -> misses the 1.2x target
    assert any(x.startswith("FAIL per-atom cost 1536 / 192 atoms = 1.25") for x in lines)
    assert "SKIP vs DeePMD-kit medium float32 192 atoms" in text
    assert any(x.startswith("PASS student 37.5x faster than medium") for x in lines)
    cpu_lines = bench.targets(results, "cpu")
    assert not any(" model " in x for x in cpu_lines)  # no CPU time of the model-only part
    assert any(x.startswith("PASS 3.56x faster than DeePMD-kit") and "e2e cpu" in x for x in cpu_lines)
    with pytest.raises(ValueError, match="clock"):
        bench.targets(results, "gpu")
    tab = bench.table(results).splitlines()
    assert len(tab) == 2 + len(results) and tab[2].endswith("| 3.56x (3.56x) |")


def test_merge_results_later_file_wins(bench: ModuleType, tmp_path: Path) -> None:
    first = [_row("lam", "small", 192, 50.0), _row("lam", "student", 192, 4.0)]
    second = [_row("lam", "student", 192, 2.0)]
    for name, rows in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps({"machine": "test", "results": rows}))
    merged = bench.merge_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(merged) == 2
    assert bench._find(merged, "lam", "student", "float32", 192)["infer_e2e_ms"] == 2.0
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        bench.merge_results([tmp_path / "bad.json"])
