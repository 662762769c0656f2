"""The one registry of named HRNet variants.

The regular widths (W18 .. W64) are generated from the width alone; only the two small variants are
spelled out. Registering a name twice is an error, and a failed lookup names the known variants.
"""

from __future__ import annotations

import os

from hrnet_tfx.config_io import did_you_mean
from hrnet_tfx.fs import is_uri
from hrnet_tfx.models.config import ConfigError, HRNetConfig, StageConfig, regular_config

_REGISTRY: dict[str, HRNetConfig] = {}
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
"""Network config files shipped with the package (``tiny.yaml``); bare file names resolve here."""


def register(name: str, config: HRNetConfig) -> None:
    """Adds a named variant. Raises ``ValueError`` if ``name`` is already registered."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not isinstance(config, HRNetConfig):
        raise TypeError(f"config for {name!r} must be an HRNetConfig, got {type(config).__name__}")
    _REGISTRY[name] = config


def list_models() -> list[str]:
    """Names of the registered variants, in registration order."""
    return list(_REGISTRY)


def packaged_configs() -> list[str]:
    """File names of the network configs shipped with the package (``tiny.yaml``)."""
    return sorted(n for n in os.listdir(PACKAGED_CONFIGS) if n.endswith(CONFIG_SUFFIXES))


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def get_config(name_or_path: str | os.PathLike | HRNetConfig) -> HRNetConfig:
    """Resolves a registered name, a config file path (.yaml/.yml/.json, local or a bucket URI; a bare file
    name that does not exist in the working directory also resolves among :data:`PACKAGED_CONFIGS`) or a
    config. A failed lookup names the closest known model or packaged config and lists them."""
    if isinstance(name_or_path, HRNetConfig):
        return name_or_path
    key = os.fspath(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key.endswith(CONFIG_SUFFIXES) or os.sep in key or is_uri(key):
        bare = os.sep not in key and not is_uri(key)
        if bare and not os.path.exists(key):
            if key in packaged_configs():
                return HRNetConfig.from_file(os.path.join(PACKAGED_CONFIGS, key))
            raise ConfigError(f"network config file not found: {key}{_suggest(key)}: not in the working directory, "
                              f"nor packaged. {_known()}")
        return HRNetConfig.from_file(key)
    raise ConfigError(f"unknown model {key!r}{_suggest(key)}. {_known()}")


def _suggest(key: str) -> str:
    return did_you_mean(key, list(_REGISTRY) + packaged_configs())


def _known() -> str:
    return (f"Known models: {', '.join(_REGISTRY)}; packaged configs: {', '.join(packaged_configs())}; "
            "or pass a network config file (.yaml/.json).")


register(
    "hrnet_w18_small",
    HRNetConfig(
        stages=(
            StageConfig(1, "BOTTLENECK", (1,), (32,)),
            StageConfig(1, "BASIC", (2, 2), (16, 32)),
            StageConfig(1, "BASIC", (2, 2, 2), (16, 32, 64)),
            StageConfig(1, "BASIC", (2, 2, 2, 2), (16, 32, 64, 128)),
        )
    ),
)
register(
    "hrnet_w18_small_v2",
    HRNetConfig(
        stages=(
            StageConfig(1, "BOTTLENECK", (2,), (64,)),
            StageConfig(1, "BASIC", (2, 2), (18, 36)),
            StageConfig(3, "BASIC", (2, 2, 2), (18, 36, 72)),
            StageConfig(2, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
        )
    ),
)
for _width in (18, 30, 32, 40, 44, 48, 64):
    register(f"hrnet_w{_width}", regular_config(_width))
del _width
