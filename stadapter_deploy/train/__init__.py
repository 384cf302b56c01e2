"""The ST-Adapter training loop and its helpers; `python -m train` (train/cli.py) is the command line."""

from .config import TrainConfig, build_config, check_paths
from .loop import run

__all__ = ["TrainConfig", "build_config", "check_paths", "run"]
