"""Shared test fixtures: one CPU thread, a private cache folder, a tiny SynthPipes dataset, Hydra configs.

* ``OMP_NUM_THREADS=1`` / ``torch.set_num_threads(1)``: the test machines are shared 2-core boxes.
* ``FGKD_CACHE``: a session temporary folder unless the caller set one (CI sets ``outputs/cache``), so
  generated datasets and cached teachers never land in a user's cache.
* ``tiny_synthpipes``: 8 small SynthPipes images (YOLO-with-masks layout) generated once per session.
* ``compose_train(*overrides)``: the composed ``conf/train.yaml`` with Hydra's runtime config installed (so
  ``${hydra:...}`` interpolations resolve outside ``@hydra.main``) and ``paths.output_dir`` in a tmp folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")  # never reach the network from tests

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


@pytest.fixture(scope="session", autouse=True)
def fgkd_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cache root for this session: ``$FGKD_CACHE`` if set, else a session temporary folder."""
    preset = os.environ.get("FGKD_CACHE")
    path = Path(preset) if preset else tmp_path_factory.mktemp("fgkd_cache")
    os.environ["FGKD_CACHE"] = str(path)
    yield path
    if not preset:
        os.environ.pop("FGKD_CACHE", None)


@pytest.fixture(scope="session")
def tiny_synthpipes(fgkd_cache: Path) -> Path:
    """A generated 8-image SynthPipes dataset (longer side 96 px); returns its root (holds data.yaml)."""
    from fgkd.data.synth import synthpipes

    return Path(synthpipes.ensure_dataset(cache_root=fgkd_cache, num_images=8, seed=0, max_side=96, progress=False))


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """``compose_train("imgsz=64", ...)`` -> composed train config with ``paths.output_dir = tmp_path/run``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    context = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test")
    context.__enter__()

    def compose_with(*overrides: str, output_dir: Path | None = None):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        run_dir = output_dir or tmp_path / "run"
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.runtime.cwd = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            del cfg["hydra"]
        return cfg

    try:
        yield compose_with
    finally:
        context.__exit__(None, None, None)
        GlobalHydra.instance().clear()
