"""Finetuning end to end on a tiny exported model: strategies, heads, replay, references, learning curve.

The "pretrained" model is a tiny DPA-2 built and exported in the test (random weights, element references set
like a pretraining run would); the downstream data are real CHO molecules from tests/data (deepmd/npy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import lam
from lam.checkpoint import export_model
from lam.data.demo import demo_path
from lam.finetune.job import check_finetune_config, run_finetuning
from lam.finetune.strategies import prepare_heads

ROOT = Path(__file__).resolve().parents[2]
CHO = ROOT / "tests" / "data" / "deepmd_cho_combustion_nopbc"
TRAIN, TEST = CHO / "C3H3O4", CHO / "C4H3O1"  # 485 frames x 10 atoms; 15 frames x 8 atoms
REFS = {"H": -13.6, "C": -1029.0, "N": -1484.0, "O": -2041.0}


def tiny_export(path: Path, heads=("pbe", "wb97x")) -> Path:
    model = lam.build_model("small", type_map=["H", "C", "N", "O"], heads=list(heads), seed=3,
                            repformer_nlayers=1, g1_dim=8, g2_dim=8, repinit_neuron=[4, 16], fitting_neurons=[8],
                            repinit_sel=16, repformer_sel=12, three_body_sel=8, repinit_rcut=4.0,
                            repformer_rcut=3.0, repformer_rcut_smth=2.5, three_body_rcut=3.0,
                            three_body_rcut_smth=2.5)
    for h in heads:
        model.set_element_energies(h, REFS)
    return export_model(model, path, config={"note": "tiny test export"})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("pretrained") / "export")


def overrides(source: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.source={source}", f"output_dir={out}", f"data.train={TRAIN}", f"data.test={TEST}",
            "data.n_train=12", "data.batch_size=4", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
            "logger=none", "optim.lr=0.01", "finetune.eval_batch_size=16",
            "finetune.head=pbe", *extra]


def compose_cfg(args: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("finetune", overrides=args)


def state(path: Path) -> dict[str, torch.Tensor]:
    return lam.load(path).state_dict()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[bool]:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()
            and not k.endswith(("element_energy", "scale"))]
    assert keys, prefix
    return [not torch.equal(before[k], after[k]) for k in keys]


@pytest.mark.parametrize("strategy", ["frozen_descriptor", "heads_only"])
def test_strategies_freeze_what_they_say(pretrained, tmp_path, strategy):
    out = run_finetuning(compose_cfg(overrides(pretrained, tmp_path, f"finetune.strategy={strategy}")))
    before, after = state(pretrained), state(out["export_dir"])
    assert not any(changed(before, after, "descriptor."))  # frozen: bit-for-bit the pretrained weights
    assert all(changed(before, after, "heads.pbe.net."))  # the finetuned head trained (every tensor moved)
    assert not any(changed(before, after, "heads.wb97x."))  # no data for the other head
    params = out["parameters"]
    n_pbe = sum(v.numel() for k, v in before.items() if k.startswith("heads.pbe.net."))
    if strategy == "heads_only":
        assert params["trainable"] == n_pbe
    else:
        assert params["trainable"] == 2 * n_pbe
    meta = json.loads((out["export_dir"] / "metadata.json").read_text())
    assert meta["heads"] == ["pbe", "wb97x"] and meta["finetune"]["strategy"] == strategy
    assert meta["finetune"]["n_train"] == 12 and meta["finetune"]["n_test"] == 15
    # the references of pbe were re-fitted on the downstream data (wb97x kept its own)
    refs = meta["element_references"]
    assert refs["wb97x"] == pytest.approx(REFS)
    assert abs(refs["pbe"]["H"] - REFS["H"]) > 1e-3 and refs["pbe"]["N"] == pytest.approx(REFS["N"])
    fit = meta["finetune"]["references"]
    assert fit["residual_rms_per_atom_after"] < fit["residual_rms_per_atom_before"]
    assert 0 < out["after"]["force_rmse"] < 100 and out["after"]["n_frames"] == 15


def test_cli_full_strategy_trains_everything_and_prints_the_table(pretrained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lam.finetune", *overrides(pretrained, tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Test errors on 15 frames (12 training frames, 3 steps" in proc.stdout
    assert "before → after finetuning" in proc.stdout and "F RMSE (meV/Å)" in proc.stdout
    before, after = state(pretrained), state(tmp_path / "export")
    assert all(changed(before, after, "descriptor.layers.0.")) and all(changed(before, after, "descriptor.repinit."))
    assert all(changed(before, after, "heads.pbe.net."))
    assert (tmp_path / "data" / "train_12.h5").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # resuming a finished run trains no further and exports the same weights
    proc2 = subprocess.run([sys.executable, "-m", "lam.finetune", *overrides(pretrained, tmp_path)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    again = state(tmp_path / "export")
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_new_head_from_named_head_and_keep_none(pretrained, tmp_path):
    out = run_finetuning(compose_cfg(overrides(pretrained, tmp_path, "finetune.head=cho", "finetune.init_from=pbe",
                                               "finetune.keep_heads=none", "finetune.strategy=heads_only")))
    model = lam.load(out["export_dir"])
    assert model.head_names == ["cho"]
    before, after = state(pretrained), model.state_dict()
    assert not any(changed(before, after, "descriptor."))
    for k in after:
        if k.startswith("heads.cho.net."):
            src = before[k.replace("heads.cho.", "heads.pbe.")]
            assert src.shape == after[k].shape and not torch.equal(src, after[k])
    # the copied head started from pbe's weights: its errors before training equal pbe's with the same references
    assert out["plan"].to_dict() == {"head": "cho", "mode": "new", "init_from": "pbe", "kept": [],
                                     "removed": ["pbe", "wb97x"]}
    assert out["after"]["energy_rmse_per_atom"] < out["before"]["energy_rmse_per_atom"] * 1.5


def test_random_new_head_keeps_listed_heads(pretrained, tmp_path):
    out = run_finetuning(compose_cfg(overrides(pretrained, tmp_path, "finetune.head=fresh",
                                               "finetune.keep_heads=[wb97x]", "finetune.strategy=frozen_descriptor")))
    model = lam.load(out["export_dir"])
    assert model.head_names == ["wb97x", "fresh"]
    refs = json.loads((out["export_dir"] / "metadata.json").read_text())["element_references"]
    # a random head has no prior: its references come from the fit alone (N absent from the data: 0)
    assert refs["fresh"]["N"] == 0.0 and refs["fresh"]["O"] < -100


def test_replay_trains_the_replayed_head(pretrained, tmp_path):
    replay = f"finetune.replay=[{{path: {demo_path('wb97x')}, head: wb97x, weight: 1.0}}]"
    out = run_finetuning(compose_cfg(overrides(pretrained, tmp_path, "finetune.strategy=heads_only", replay,
                                               "trainer.max_steps=4")))
    before, after = state(pretrained), state(out["export_dir"])
    assert all(changed(before, after, "heads.wb97x.net."))
    assert not any(changed(before, after, "descriptor."))
    meta = json.loads((out["export_dir"] / "metadata.json").read_text())
    assert meta["heads"] == ["pbe", "wb97x"]


def test_conflicting_options_raise(pretrained, tmp_path):
    model = lam.load(pretrained)
    with pytest.raises(ValueError, match="applies to a new head only"):
        prepare_heads(model, "pbe", init_from="wb97x")
    with pytest.raises(ValueError, match="not a head of the pretrained model"):
        prepare_heads(model, "new", init_from="rpbe")
    with pytest.raises(ValueError, match="keep_heads drops it"):
        prepare_heads(model, "pbe", keep_heads="none", replay_heads=["wb97x"])
    with pytest.raises(ValueError, match="does not have"):
        prepare_heads(model, "pbe", keep_heads=["rpbe"])
    assert model.head_names == ["pbe", "wb97x"]  # failed plans change nothing
    with pytest.raises(ValueError, match="strategy must be one of"):
        check_finetune_config(compose_cfg(overrides(pretrained, tmp_path, "finetune.strategy=lora")))
    with pytest.raises(ValueError, match="pretraining option"):
        check_finetune_config(compose_cfg([f"model.source={pretrained}", "finetune.head=pbe", "data=demo"]))
    with pytest.raises(ValueError, match="replay cannot be combined"):
        check_finetune_config(compose_cfg(overrides(
            pretrained, tmp_path, "data.n_train=null", "finetune.learning_curve=[4,8]",
            f"finetune.replay=[{{path: {demo_path('wb97x')}, head: wb97x}}]")))
    with pytest.raises(FileNotFoundError, match="python -m lam.pretrain"):
        run_finetuning(compose_cfg(overrides(tmp_path / "outputs/demo/pretrain/export", tmp_path)))


def test_learning_curve_writes_csv_and_png(pretrained, tmp_path):
    from lam.finetune.learning_curve import read_learning_curve

    out = run_finetuning(compose_cfg(overrides(pretrained, tmp_path, "data.n_train=null",
                                               "finetune.learning_curve=[4,8]", "trainer.max_steps=2")))
    rows = read_learning_curve(out["csv"])
    assert [(int(r["n_train"]), r["model"]) for r in rows] == [(0, "pretrained"), (4, "pretrained"), (4, "scratch"),
                                                               (8, "pretrained"), (8, "scratch")]
    assert all(int(r["steps"]) == (0 if r["n_train"] == 0 else 2) for r in rows)
    assert all(np.isfinite(r["force_rmse"]) and r["force_rmse"] > 0 for r in rows)
    png = out["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
