"""The one rule for served model names (a directory under the model base, a URL path segment for REST)."""

from __future__ import annotations

import re

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_model_name(model_name: str) -> str:
    """``model_name`` if it is a usable directory name (letters, digits, ``_.-``; no trailing newline), else
    ``ValueError``."""
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(f"model name {model_name!r} is not a usable directory name (letters, digits, _ . -)")
    return model_name
