"""End-to-end pretraining on the shipped demo data: ``python -m lam.pretrain +experiment=demo`` (tiny model)."""

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
from lam.checkpoint import CheckpointFormatError, export_model
from lam.data.demo import demo_path
from lam.data.formats.h5 import H5Reader
from lam.data.graph import AtomicGraph, collate
from lam.train.datamodule import MultiHeadDataModule
from lam.train.job import check_config

ROOT = Path(__file__).resolve().parents[2]
HEADS = ["pbe", "wb97x", "rpbe"]
# The demo experiment, narrowed further so that the test takes well under a minute on 2 cores.
TINY = ["+experiment=demo", "model.repformer_nlayers=1", "model.g1_dim=16", "model.g2_dim=8",
        "model.repinit_neuron=[8,16]", "model.fitting_neurons=[16,16]", "logger=csv", "data.num_workers=0",
        "trainer.enable_progress_bar=false"]


def run_pretrain(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "lam.pretrain", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo_run")
    proc = run_pretrain([*TINY, f"output_dir={out}", "trainer.max_steps=80", "trainer.val_check_interval=40",
                         "checkpoint.every_n_steps=40", "optim.lr=0.005"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_demo_run_layout_table_and_falling_errors(demo_run):
    out, proc = demo_run
    assert (out / ".hydra" / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "logs" / "csv" / "metrics.csv").is_file()
    assert (out / "export" / "model.safetensors").is_file() and (out / "export" / "metadata.json").is_file()
    assert f"Exported model: {out / 'export'}" in proc.stdout
    table = proc.stdout[proc.stdout.index("Validation errors per head"):]
    for head in HEADS:
        assert f"\n{head} " in table
    meta = json.loads((out / "export" / "metadata.json").read_text())
    final, initial = meta["metrics"], None
    history = [line for line in table.splitlines() if line.startswith(tuple(HEADS))]
    assert len(history) == 3 and all("→" in line for line in history)
    initial = {}
    for line in history:  # "head  a → b  c → d ..." (first column: E RMSE, third: F RMSE)
        cells = [c for c in line.split("  ") if "→" in c]
        initial[line.split()[0]] = [float(c.split("→")[0]) for c in cells]
    for head in HEADS:
        assert final[f"val/{head}/force_rmse"] * 1000 < initial[head][2], (head, final, initial[head])
    # element references were fitted per head (not left at zero)
    refs = meta["element_references"]
    assert set(refs) == set(HEADS)
    assert all(abs(refs[h]["H"]) > 1.0 for h in HEADS)


def test_export_metadata_and_lam_load(demo_run):
    out, _ = demo_run
    meta = json.loads((out / "export" / "metadata.json").read_text())
    assert meta["format_version"] == 1 and meta["heads"] == HEADS
    assert meta["type_map"] == ["H", "C", "N", "O"]
    assert meta["lam_version"] == lam.__version__ and meta["torch_version"] == str(torch.__version__)
    assert meta["config"]["model"]["_target_"] == "lam.build_model"
    assert set(meta["data_hashes"]) == {f"demo_{h}" for h in HEADS}
    assert all(len(v["sha256"]) == 64 for v in meta["data_hashes"].values())
    model = lam.load(out / "export")
    assert model.head_names == HEADS
    frame = H5Reader(demo_path("wb97x"))[0]
    batch = collate([AtomicGraph.from_frame(frame, model.rcut, head=1, dtype=model.dtype)])
    pred = model(batch, compute_forces=True)
    # the exported (EMA) model predicts wB97X energies within a few eV of the label for this molecule
    assert abs(float(pred["energy"][0]) - frame.energy) < 0.5 * frame.n_atoms
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["lam"]["config"]["data"]["batch_size"] == 8
    assert set(ckpt["lam"]["data_hashes"]) == set(meta["data_hashes"])
    assert "shadow" in ckpt["ema"]


def test_load_never_unpickles_and_checks_format_version(tmp_path, monkeypatch):
    model = lam.build_model("small", type_map=["H", "O"], heads=["a", "b"], repformer_nlayers=1, g1_dim=8,
                            g2_dim=8, repinit_neuron=[4, 16], fitting_neurons=[8])
    model.set_element_energies("b", {"H": -13.6, "O": -2041.0})
    export_model(model, tmp_path / "m", config={"note": "test"})

    def no_pickle(*args, **kwargs):
        raise AssertionError("lam.load must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    loaded = lam.load(tmp_path / "m")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert float(loaded.heads["b"].element_energy[1]) == pytest.approx(-2041.0)
    meta_file = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointFormatError, match="newer lam"):
        lam.load(tmp_path / "m")
    meta_file.write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(CheckpointFormatError, match="no upgrader from 0 to 1"):
        lam.load(tmp_path / "m")
    from lam import checkpoint

    monkeypatch.setitem(checkpoint.UPGRADERS, 0, lambda m, s: (m, s))
    assert lam.load(tmp_path / "m").head_names == ["a", "b"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("pretrain", overrides=overrides)


def test_conflicting_options_raise(tmp_path):
    cfg = _compose(["+experiment=demo", f"output_dir={tmp_path}", "trainer.inference_mode=true"])
    with pytest.raises(ValueError, match="inference_mode"):
        check_config(cfg)
    cfg = _compose(["+experiment=demo", "trainer.use_distributed_sampler=true"])
    with pytest.raises(ValueError, match="use_distributed_sampler"):
        check_config(cfg)
    datasets = [{"path": str(demo_path(h)), "head": h} for h in HEADS]
    with pytest.raises(ValueError, match="exactly one of data.batch_size"):
        MultiHeadDataModule(datasets, cutoff=6.0, head_names=HEADS, batch_size=8, max_atoms=100)
    with pytest.raises(ValueError, match="not a head of the model"):
        MultiHeadDataModule(datasets, cutoff=6.0, head_names=["pbe", "wb97x"])
    with pytest.raises(ValueError, match="unknown key"):
        MultiHeadDataModule([{"path": str(demo_path("pbe")), "heads": "pbe"}], cutoff=6.0, head_names=HEADS)


def test_sampler_weights_mix_heads_and_pack_atoms():
    datasets = [{"path": str(demo_path("pbe")), "head": "pbe", "sample_weight": 3.0},
                {"path": str(demo_path("wb97x")), "head": "wb97x", "sample_weight": 1.0}]
    dm = MultiHeadDataModule(datasets, cutoff=5.0, head_names=HEADS, batch_size=None, max_atoms=60,
                             epoch_size=4000, seed=3)
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    order = sampler.global_order(0)
    n_pbe = len(dm.readers[0])
    frac_pbe = float(np.mean(order < n_pbe))
    assert abs(frac_pbe - 0.75) < 0.03
    assert np.array_equal(order, sampler.global_order(0)) and not np.array_equal(order, sampler.global_order(1))
    val_ids = set((dm.val_indices[0]).tolist())
    assert not val_ids & set(order[order < n_pbe].tolist())  # validation frames are never trained on
    for batch in sampler._rank_batches(0):
        assert dm.n_atoms[batch].sum() <= 60
    batch = next(iter(loader))
    assert int((batch.ptr[1:] - batch.ptr[:-1]).sum()) <= 60
    assert set(batch.head.tolist()) <= {0, 1}


class _Poisoned(torch.nn.Module):
    """The real potential, whose energies turn NaN while ``poison`` is set (to exercise the NaN guard)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.poison = False

    @property
    def head_names(self) -> list[str]:
        return self.inner.head_names

    def forward(self, batch, **kwargs):
        out = self.inner(batch, **kwargs)
        if self.poison:
            out = {**out, "energy": out["energy"] * float("nan")}
        return out


def _water_module(tmp_path: Path, max_nonfinite: int):
    import lightning as L

    from lam.data.formats.deepmd_npy import read_deepmd
    from lam.data.formats.h5 import write_h5
    from lam.train.module import PotentialModule

    h5 = tmp_path / "water.h5"
    write_h5(h5, list(read_deepmd(ROOT / "tests/data/deepmd_water_64h2o"))[:12], functional="unknown", head="w")
    model = lam.build_model("small", type_map=["H", "O"], heads=["w"], repformer_nlayers=1, g1_dim=8, g2_dim=8,
                            repinit_neuron=[4, 16], fitting_neurons=[8], repinit_sel=60, repformer_sel=30,
                            three_body_sel=20)
    poisoned = _Poisoned(model)
    dm = MultiHeadDataModule([{"path": str(h5), "head": "w"}], cutoff=model.rcut, head_names=["w"],
                             batch_size=1, val_fraction=0.0)
    module = PotentialModule(poisoned, optimizer={"lr": 1e-3}, max_nonfinite_steps=max_nonfinite)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, inference_mode=False, use_distributed_sampler=False,
                        limit_val_batches=0, enable_model_summary=False)
    return poisoned, module, dm, trainer


def test_nonfinite_loss_skips_the_step_then_aborts(tmp_path):
    import lightning as L

    from lam.train.module import NonFiniteLossError

    poisoned, module, dm, trainer = _water_module(tmp_path, max_nonfinite=3)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            poisoned.poison = trainer.global_step in (2, 3)
            snapshots[trainer.global_step] = {k: v.clone() for k, v in poisoned.state_dict().items()}

    trainer.callbacks.append(Poison())
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6 and module.nonfinite_total == 2 and module.nonfinite_in_a_row == 0
    for k in snapshots[2]:  # steps 2 and 3 were skipped: the weights did not move
        assert torch.equal(snapshots[2][k], snapshots[4][k]), k
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])
    assert all(torch.isfinite(v).all() for v in poisoned.state_dict().values())

    poisoned, module, dm, trainer = _water_module(tmp_path, max_nonfinite=3)
    poisoned.poison = True
    with pytest.raises(NonFiniteLossError, match="3 optimiser steps in a row"):
        trainer.fit(module, datamodule=dm)
