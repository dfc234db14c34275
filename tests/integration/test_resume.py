"""A run killed with SIGKILL and restarted with the same command continues exactly where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["+experiment=demo", "model.repformer_nlayers=1", "model.g1_dim=16", "model.g2_dim=8",
        "model.repinit_neuron=[8,16]", "model.fitting_neurons=[16,16]", "logger=csv", "data.num_workers=0",
        "trainer.enable_progress_bar=false", "trainer.max_steps=36", "trainer.val_check_interval=1000",
        "checkpoint.every_n_steps=8", "record_frames=true", "validate_before_training=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _records(out: Path) -> list[dict]:
    path = out / "seen_frames" / "rank0.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "lam.pretrain", *ARGS, f"output_dir={out}"]


def test_sigkill_then_same_command_resumes_with_identical_losses(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref = subprocess.run(_command(ref_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-4000:]
    reference = {r["step"]: r for r in _records(ref_dir)}
    assert sorted(reference) == list(range(36))

    proc = subprocess.Popen(_command(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [r["step"] for r in _records(run_dir)]
        if steps and max(steps) >= 19 and (run_dir / "checkpoints" / "last.ckpt").is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in _records(run_dir))
    assert killed_at < 35

    again = subprocess.run(_command(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    records = _records(run_dir)
    pids = list(dict.fromkeys(r["pid"] for r in records))
    assert len(pids) == 2
    resumed = [r for r in records if r["pid"] == pids[1]]
    first = resumed[0]["step"]
    assert 8 <= first <= killed_at + 1 and first % 8 == 0, "resumed from the last checkpoint, not from scratch"
    assert [r["step"] for r in resumed] == list(range(first, 36))
    for r in resumed:
        assert r["sample_ids"] == reference[r["step"]]["sample_ids"]
        assert r["loss"] == pytest.approx(reference[r["step"]]["loss"], rel=1e-5), r["step"]
    final = json.loads((run_dir / "seen_frames" / "rank0_final.json").read_text())
    final_ref = json.loads((ref_dir / "seen_frames" / "rank0_final.json").read_text())
    assert final["global_step"] == final_ref["global_step"] == 36
