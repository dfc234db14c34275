"""``python -m lam.pretrain +experiment=demo``: multi-head pretraining (Hydra entry point).

Configuration lives in ``conf/pretrain.yaml`` and its groups (model, data, trainer, loss, logger,
experiment); the job itself is :func:`lam.train.job.run_pretraining`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    """Compose the config and run the job."""
    from lam.train.job import run_pretraining

    run_pretraining(cfg)


if __name__ == "__main__":
    main()
