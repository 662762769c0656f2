"""Checks shared by the manifest writers: Kubernetes names and resource quantities."""

from __future__ import annotations

import re

from hrnet_tfx.models.config import ConfigError

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$")
"""A Kubernetes resource quantity (the apimachinery Quantity pattern): ``"8"``, ``"500m"``, ``"64Gi"``."""
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""A DNS-1035 label (Service names): lowercase letters, digits and ``-``, starting with a letter."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(what: str, name: str, max_length: int = 63) -> str:
    if not DNS1035.match(name or "") or len(name) > max_length:
        raise ConfigError(f"{what} {name!r} must be a lowercase DNS label (a-z, 0-9, '-', starting with a letter, "
                          f"at most {max_length} characters)")
    return name


def check_quantity(what: str, value: str) -> str:
    if value and not QUANTITY.match(value):
        raise ConfigError(f"{what}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '64Gi')")
    return value


def cpu_cores(value: str) -> float:
    """The number of cores a CPU quantity stands for (``"500m"`` -> 0.5, ``"4"`` -> 4)."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
