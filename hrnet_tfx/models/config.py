"""The frozen network config of the HRNet-C family (Wang et al., "Deep High-Resolution Representation Learning
for Visual Recognition", TPAMI 2020): stem, stages of high-resolution modules, classification head. A file
(:meth:`HRNetConfig.from_file`) names every key; only configs built in Python take the official defaults."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from hrnet_tfx.config_io import ConfigError, check_keys, from_dict, read_config_file, to_dict

# ConfigError stays importable from here, its first home.
__all__ = ["BLOCK_EXPANSION", "ConfigError", "HRNetConfig", "StageConfig", "regular_config"]

INFERENCE_DTYPES = ("float32", "bfloat16")
"""Compute dtypes :func:`hrnet_tfx.models.inference.inference_model` builds (stated here, where importing
costs no TensorFlow, for the training config's ``serving_dtype`` check)."""
BLOCK_EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}
"""Output channels of a block divided by its ``planes``, per block type."""


def _as_int_tuple(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{where}: expected a list of positive integers, got {value!r}")
    out = tuple(value)
    if not out or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out):
        raise ConfigError(f"{where}: expected a non-empty list of positive integers, got {value!r}")
    return out


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    """Refuses keys ``cls`` does not have and requires every key it has: a file names the whole network,
    so nothing silently takes a default."""
    fields = [f.name for f in dataclasses.fields(cls)]
    check_keys(data, fields, where)
    missing = [name for name in fields if name not in data]
    if missing:
        official = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        hint = ", ".join(f"{k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                         for k, v in official.items() if k in missing)
        raise ConfigError(f"{where}: missing key(s) {missing}: a network config names every key"
                          + (f" (the official HRNet's: {hint})" if hint else ""))


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage: ``num_modules`` high-resolution modules over ``len(num_channels)`` branches.

    Args:
      num_modules: how many HighResolutionModules the stage stacks.
      block: ``"BASIC"`` (two 3x3 convs) or ``"BOTTLENECK"`` (1x1-3x3-1x1, expansion 4).
      num_blocks: blocks per branch, one entry per branch.
      num_channels: ``planes`` per branch; a branch outputs ``planes * expansion`` channels.
    """

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.num_modules, int) or self.num_modules < 1:
            raise ConfigError(f"num_modules must be a positive integer, got {self.num_modules!r}")
        if self.block not in BLOCK_EXPANSION:
            raise ConfigError(f"block must be one of {sorted(BLOCK_EXPANSION)}, got {self.block!r}")
        object.__setattr__(self, "num_blocks", _as_int_tuple(self.num_blocks, "num_blocks"))
        object.__setattr__(self, "num_channels", _as_int_tuple(self.num_channels, "num_channels"))
        if len(self.num_blocks) != len(self.num_channels):
            raise ConfigError(f"num_blocks {list(self.num_blocks)} and num_channels {list(self.num_channels)} "
                              "must have one entry per branch")

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels each branch outputs (``planes * expansion``)."""
        return tuple(c * BLOCK_EXPANSION[self.block] for c in self.num_channels)


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
    """The whole HRNet-C classification network.

    Args:
      stages: the stages in order; stage ``k`` (0-based) has ``k + 1`` branches.
      stem_channels: output channels of the two stride-2 stem convs (official: 64, 64).
      head_channels: ``planes`` of the head's per-branch Bottleneck ("incre" module), one per final
        branch; outputs are 4x these (official: 32, 64, 128, 256 -> 128 .. 1024).
      num_features: channels of the final 1x1 conv before pooling (official: 2048).
      head_conv_bias: whether the head's downsampling and final convs have a bias (official: True;
        the PaddlePaddle "ssld" checkpoints have none).
    """

    stages: tuple[StageConfig, ...]
    stem_channels: tuple[int, int] = (64, 64)
    head_channels: tuple[int, ...] = (32, 64, 128, 256)
    num_features: int = 2048
    head_conv_bias: bool = True

    def __post_init__(self):
        stages = tuple(self.stages)
        if len(stages) < 2:
            raise ConfigError(f"stages: need at least 2 stages, got {len(stages)}")
        for k, stage in enumerate(stages):
            if not isinstance(stage, StageConfig):
                raise ConfigError(f"stages[{k}]: expected a StageConfig, got {type(stage).__name__}")
            if stage.num_branches != k + 1:
                raise ConfigError(f"stages[{k}]: stage {k + 1} must have {k + 1} branch(es), got {stage.num_branches}")
        object.__setattr__(self, "stages", stages)
        stem = _as_int_tuple(self.stem_channels, "stem_channels")
        if len(stem) != 2:
            raise ConfigError(f"stem_channels: expected 2 entries, got {list(stem)}")
        object.__setattr__(self, "stem_channels", stem)
        head = _as_int_tuple(self.head_channels, "head_channels")
        if len(head) != stages[-1].num_branches:
            raise ConfigError(f"head_channels: need one entry per final branch ({stages[-1].num_branches}), "
                              f"got {list(head)}")
        object.__setattr__(self, "head_channels", head)
        if not isinstance(self.num_features, int) or self.num_features < 1:
            raise ConfigError(f"num_features must be a positive integer, got {self.num_features!r}")
        if not isinstance(self.head_conv_bias, bool):
            raise ConfigError(f"head_conv_bias must be true or false, got {self.head_conv_bias!r}")

    @property
    def downsample_factor(self) -> int:
        """Input height and width must be multiples of this (2 per stem conv, 2 per extra branch)."""
        return 2 ** (2 + len(self.stages) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly dict that :meth:`from_dict` turns back into an equal config."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HRNetConfig":
        """Builds a config from a plain mapping that names every key (as :meth:`to_dict` writes it); unknown
        or missing keys raise :class:`ConfigError` naming them."""
        _check_keys(data, cls, "config")
        fields = dict(data)
        stages_raw = fields.get("stages")
        if not isinstance(stages_raw, (list, tuple)):
            raise ConfigError(f"stages: expected a list of stage mappings, got {stages_raw!r}")
        fields["stages"] = tuple(from_dict(StageConfig, stage, f"stages[{k}]", require_all=True)
                                 for k, stage in enumerate(stages_raw))
        return cls(**fields)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "HRNetConfig":
        """Reads a config from a ``.yaml``/``.yml`` or ``.json`` file (see ``configs/`` for examples)."""
        path = os.fspath(path)
        data = read_config_file(path, "network config")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def regular_config(width: int) -> HRNetConfig:
    """The regular HRNet-W``width`` (W18 .. W64): stage 1 of 4 Bottlenecks with 64 planes, then stages
    of 1/4/3 modules with 4 BasicBlocks per branch and widths ``C, 2C, 4C, 8C``."""
    c = width
    return HRNetConfig(
        stages=(
            StageConfig(1, "BOTTLENECK", (4,), (64,)),
            StageConfig(1, "BASIC", (4, 4), (c, 2 * c)),
            StageConfig(4, "BASIC", (4, 4, 4), (c, 2 * c, 4 * c)),
            StageConfig(3, "BASIC", (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c)),
        )
    )
