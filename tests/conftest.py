"""Shared test setup: Keras 2 everywhere, quiet TensorFlow, and the tiny network config."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import pytest  # noqa: E402

import hrnet_tfx  # noqa: E402,F401

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "hrnet_tfx" / "configs" / "tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def tiny_config_path() -> pathlib.Path:
    """Path of the packaged tiny network config (64x64 inputs in tests)."""
    return TINY_CONFIG
