"""Where outputs and caches go: under the working directory, never next to the installed package.

* ``outputs_root()``: ``$FGKD_OUTPUTS``, else ``$FGKD_ROOT/outputs``, else ``<cwd>/outputs`` (Hydra's run
  folders use the same rule, conf/hydra/default.yaml);
* ``cache_root()``: ``$FGKD_CACHE``, else ``<outputs_root>/cache`` (generated datasets, teachers);
* ``project_root()``: the checkout holding ``train.py`` and ``conf/`` that sweeps run: the working
  directory (or a parent of it) when it is one, else the checkout this package was installed from.
"""

from __future__ import annotations

import os
from pathlib import Path

OUTPUTS_ENV, ROOT_ENV, CACHE_ENV = "FGKD_OUTPUTS", "FGKD_ROOT", "FGKD_CACHE"
#: set by sweep.py for its runs: the W&B group of every run of one sweep (fgkd.engine.instantiate_loggers)
SWEEP_GROUP_ENV = "FGKD_SWEEP_GROUP"


def outputs_root() -> Path:
    if os.environ.get(OUTPUTS_ENV):
        return Path(os.environ[OUTPUTS_ENV]).expanduser().absolute()
    base = Path(os.environ[ROOT_ENV]).expanduser() if os.environ.get(ROOT_ENV) else Path.cwd()
    return (base / "outputs").absolute()


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    return outputs_root() / "cache"


def _is_project(folder: Path) -> bool:
    return (folder / "train.py").is_file() and (folder / "conf" / "train.yaml").is_file()


def project_root() -> Path:
    """The checkout with ``train.py`` + ``conf/`` (cwd first); a clear error when there is none."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if _is_project(folder):
            return folder
    installed = Path(__file__).resolve().parents[2]
    if _is_project(installed):
        return installed
    raise FileNotFoundError(f"no fgkd checkout (train.py + conf/train.yaml) in {cwd} or its parents, nor at "
                            f"{installed}; run from a clone of the project")
