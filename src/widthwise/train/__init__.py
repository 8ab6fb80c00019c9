"""``widthwise train``: the reference trainer (config, run directory, checkpoints, logs, plots)."""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
