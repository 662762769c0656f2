"""Imports official PyTorch HRNet weights (official or timm key names) into a Keras HRNet.

Because every Keras layer with weights carries its PyTorch module path as its name, the mapping is a
name lookup plus a layout change: conv kernels OIHW -> HWIO, Linear (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance. The whole source is
checked first, and an error names every missing, unexpected or mis-shaped key; weights are assigned
only when everything matches, so a model is never half loaded.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

_IGNORED_SUFFIXES = ("num_batches_tracked",)
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net")


class WeightImportError(ValueError):
    """The weights do not fit the model; the message lists every offending key."""


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict as NumPy arrays.

    Args:
      source: a ``.safetensors`` file (read with safetensors' NumPy API), a ``.pth``/``.pt``/``.pth.tar``/
        ``.bin`` file written by ``torch.save`` (read without PyTorch, see
        :mod:`hrnet_tfx.models.torch_pickle`), or a mapping of names to arrays. A checkpoint that wraps
        the state_dict (``{"state_dict": ...}``) and DataParallel's ``module.`` prefix are unwrapped.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise WeightImportError(f"weights file not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            try:
                state = load_file(path)
            except Exception as e:  # noqa: BLE001 - report which file and why
                raise WeightImportError(f"{path}: cannot read safetensors file: {e}") from None
        else:
            from hrnet_tfx.models.torch_pickle import TorchFileError, load_torch_file

            try:
                state = load_torch_file(path)
            except TorchFileError as e:
                raise WeightImportError(str(e)) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state.get(key), Mapping) and not any(isinstance(v, np.ndarray) for v in state.values()):
            state = dict(state[key])
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = sorted(k for k, v in state.items() if not hasattr(v, "shape"))
    if bad:
        raise WeightImportError(f"not arrays: {bad}")
    return {k: np.asarray(v) for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}


def _torch_layout(layer) -> dict[str, tuple[int, Any]]:
    """PyTorch key suffix -> (index into layer.weights, function from the torch array to Keras layout)."""
    import tf_keras as keras

    ident = lambda a: a  # noqa: E731
    if isinstance(layer, keras.layers.Conv2D):
        out = {"weight": (0, lambda a: np.transpose(a, (2, 3, 1, 0)))}
        if layer.use_bias:
            out["bias"] = (1, ident)
        return out
    if isinstance(layer, keras.layers.Dense):
        return {"weight": (0, np.transpose), "bias": (1, ident)}
    if isinstance(layer, keras.layers.BatchNormalization):
        return {"weight": (0, ident), "bias": (1, ident), "running_mean": (2, ident), "running_var": (3, ident)}
    return {}


def torch_key_map(model) -> dict[str, tuple[Any, int, Any]]:
    """Every PyTorch state_dict key the model expects -> (layer, weight index, layout converter)."""
    keys = {}
    for layer in model.layers:
        for suffix, (index, convert) in _torch_layout(layer).items():
            keys[f"{layer.name}.{suffix}"] = (layer, index, convert)
    return keys


def load_pytorch_weights(
    model,
    source: str | os.PathLike | Mapping[str, Any],
    exclude: Sequence[str] = (),
) -> int:
    """Loads official/timm PyTorch HRNet weights into ``model`` (built by ``build_model``).

    Args:
      model: the ``tf_keras.Model`` to fill.
      source: see :func:`read_state_dict`.
      exclude: key prefixes to skip on both sides, e.g. ``("classifier",)`` to fine-tune ImageNet
        weights on another number of classes.

    Returns:
      The number of tensors loaded.

    Raises:
      WeightImportError: naming every key that is missing from the source, not used by the model, or
        of the wrong shape. Nothing is assigned in that case.
    """
    state = read_state_dict(source)
    excluded = tuple(exclude)

    def keep(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in excluded)

    expected = {k: v for k, v in torch_key_map(model).items() if keep(k)}
    given = {k: v for k, v in state.items() if keep(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    values: dict[str, np.ndarray] = {}
    mismatched = []
    for key in sorted(set(expected) & set(given)):
        layer, index, convert = expected[key]
        array = convert(given[key])
        want = tuple(layer.weights[index].shape)
        if tuple(array.shape) != want:
            mismatched.append(f"{key}: file {tuple(given[key].shape)} -> {tuple(array.shape)}, model {want}")
            continue
        values[key] = array
    problems = _describe(missing, "missing from the weights")
    if any(k.startswith(("downsamp_modules", "final_layer")) and k.endswith(".bias") for k in missing):
        problems.append("  (weights without head conv biases, e.g. Paddle's 'ssld', need head_conv_bias: false)")
    problems += _describe(unexpected, "not used by the model")
    problems += _describe(mismatched, "shape mismatch")
    if problems:
        raise WeightImportError(
            f"weights do not fit model {model.name!r} ({len(expected)} tensors expected, {len(given)} given); "
            "nothing was loaded:\n" + "\n".join(problems)
        )
    import tf_keras as keras

    assignments = [(layer.weights[index], values[key]) for key, (layer, index, _) in expected.items()]
    keras.backend.batch_set_value(assignments)
    return len(assignments)


def _describe(keys: Iterable[str], what: str) -> list[str]:
    keys = list(keys)
    return [f"{len(keys)} key(s) {what}:"] + [f"  {k}" for k in keys] if keys else []
