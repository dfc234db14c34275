"""``python -m lam.distill +experiment=demo``: distill a teacher into a compact student (Hydra entry point).

Configuration: ``conf/distill/config.yaml`` and ``conf/distill/experiment/``; the loop is
:class:`lam.distill.loop.DistillLoop`. Rerunning the same command with the same ``output_dir`` resumes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


def _demo_path(head: str) -> str:
    from lam.data.demo import demo_path

    return str(demo_path(head))


OmegaConf.register_new_resolver("demo_path", _demo_path, replace=True)


@hydra.main(version_base="1.3", config_path="../../conf/distill", config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose the config and run the loop."""
    from lam.distill.loop import run_distill

    sections = OmegaConf.to_container(cfg, resolve=True)
    run_distill(**sections)


if __name__ == "__main__":
    main()
