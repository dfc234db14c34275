"""Two CPU processes (gloo) under torchrun: different frames per rank, identical weights afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lam.data.demo import demo_path
from lam.train.datamodule import MultiHeadDataModule, _EvalSampler

ROOT = Path(__file__).resolve().parents[2]
HEADS = ["pbe", "wb97x", "rpbe"]


def test_torchrun_two_cpu_ranks(tmp_path):
    out = tmp_path / "ddp"
    args = ["+experiment=demo", "model.repformer_nlayers=1", "model.g1_dim=16", "model.g2_dim=8",
            "model.repinit_neuron=[8,16]", "model.fitting_neurons=[16,16]", "logger=csv", "data.num_workers=0",
            "trainer.enable_progress_bar=false", "trainer.max_steps=20", "trainer.val_check_interval=10",
            "trainer.strategy=ddp", "trainer.devices=2", "checkpoint.every_n_steps=10", "record_frames=true",
            "validate_before_training=false", "data.batch_size=4", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "lam.pretrain", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    finals = [json.loads((out / "seen_frames" / f"rank{r}_final.json").read_text()) for r in (0, 1)]
    assert [f["world_size"] for f in finals] == [2, 2]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 20
    assert finals[0]["weights_sha256"] == finals[1]["weights_sha256"]

    seen = [[json.loads(line) for line in (out / "seen_frames" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert [len(s) for s in seen] == [20, 20]
    for a, b in zip(*seen):
        assert a["step"] == b["step"]
        assert len(a["sample_ids"]) == len(b["sample_ids"]) == 4
        # the two ranks draw from one global stream, dealt batch by batch: no frame is shared within a step
        assert not set(a["sample_ids"]) & set(b["sample_ids"])
    ids = [sorted({i for rec in s for i in rec["sample_ids"]}) for s in seen]
    assert ids[0] != ids[1]
    assert (out / "export" / "metadata.json").is_file()  # rank 0 exported


def test_validation_frames_are_split_without_duplicates():
    datasets = [{"path": str(demo_path(h)), "head": h} for h in HEADS]
    dm = MultiHeadDataModule(datasets, cutoff=5.0, head_names=HEADS, batch_size=3, val_fraction=0.2)
    indices = np.concatenate([v + o for v, o in zip(dm.val_indices, dm.dataset.offsets[:-1])])
    shares = [np.concatenate(_EvalSampler(indices, dm.n_atoms, 3, None, 2, rank).batches) for rank in (0, 1)]
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    assert sorted(np.concatenate(shares).tolist()) == sorted(indices.tolist())
