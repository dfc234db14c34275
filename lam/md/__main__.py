"""``python -m lam.md model=<source> structure=PATH ensemble=nve|nvt|mts dt=<fs> steps=N ...``.

Composes ``conf/md/md.yaml`` (its own config root, so that ``model=`` is a plain key, not the
``conf/model`` group of pretraining) and calls :func:`lam.md.run.run_md`; writes ``md.traj`` and ``md.csv``
under ``output_dir`` and prints the drift of the conserved energy (meV/atom/ps).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../../conf/md", config_name="md")
def main(cfg: DictConfig) -> None:
    """Run MD from the composed config and print a summary."""
    from lam.md.run import run_md

    kwargs = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.pop("hydra", None)
    result = run_md(**{str(k): v for k, v in kwargs.items()})
    print(result.summary())


if __name__ == "__main__":
    main()
