"""``python -m lam.finetune +experiment=demo_finetune``: finetune a pretrained model (Hydra entry point).

Configuration lives in ``conf/finetune.yaml`` and its groups; the job is :func:`lam.finetune.job.run_finetuning`
(or :func:`lam.finetune.learning_curve.run_learning_curve` when ``finetune.learning_curve`` is set).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../../conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    """Compose the config and run the job."""
    from lam.finetune.job import run_finetuning

    run_finetuning(cfg)


if __name__ == "__main__":
    main()
