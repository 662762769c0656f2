"""``serve()``: TF Serving's ``tensorflow_model_server`` on a model base when it is installed, else the
development server (:mod:`hrnet_tfx.serving.dev`, for development, tests and the demo). Both serve the latest
version of one model on the same ports and stop cleanly on SIGINT/SIGTERM; only TF Serving batches. Both
run the exported graph, whose weights are constants, so oneDNN reorders each filter once in either
(:mod:`hrnet_tfx.serving.export`); no process-wide setting is needed for that.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from typing import TYPE_CHECKING, Sequence

from hrnet_tfx.serving.batching import BatchingOptions
from hrnet_tfx.serving.model_base import resolve_model

if TYPE_CHECKING:
    from hrnet_tfx.serving.dev.server import DevServerOptions

log = logging.getLogger(__name__)

MODEL_SERVER = "tensorflow_model_server"



def model_server_command(binary: str, model_name: str, model_dir: str, *, grpc_port: int = 8500,
                         rest_port: int = 8501, poll_seconds: float = 1.0, batching_parameters_file: str | None = None,
                         extra_args: Sequence[str] = ()) -> list[str]:
    """The ``tensorflow_model_server`` command line for one model.

    Args:
      binary: the executable.
      model_name, model_dir: the model and its directory of versions (``--model_base_path``).
      grpc_port, rest_port: ``--port`` and ``--rest_api_port`` (0 disables REST, as in TF Serving).
      poll_seconds: ``--file_system_poll_wait_seconds`` (TF Serving takes whole seconds; at least 1).
      batching_parameters_file: turns on ``--enable_batching`` with this parameters file.
      extra_args: more flags, passed as given.
    """
    command = [binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_name={model_name}",
               f"--model_base_path={model_dir}", f"--file_system_poll_wait_seconds={max(1, round(poll_seconds))}"]
    if batching_parameters_file:
        command += ["--enable_batching=true", f"--batching_parameters_file={batching_parameters_file}"]
    return command + list(extra_args)


def write_batching_parameters(options: BatchingOptions, directory: str | None = None) -> str:
    """Writes ``options`` as a ``--batching_parameters_file``; returns its path."""
    fd, path = tempfile.mkstemp(prefix="batching_parameters_", suffix=".txt", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(options.to_text_proto())
    return path


def run_model_server(command: Sequence[str]) -> int:
    """Runs ``tensorflow_model_server`` in the foreground, forwarding SIGINT/SIGTERM; returns its exit code."""
    process = subprocess.Popen(list(command))
    previous = {}

    def forward(signum, frame):
        if process.poll() is None:
            process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, forward)
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:
            process.terminate()
            process.wait()


def serve(model_base: str, model_name: str | None = None, grpc_port: int = 8500, rest_port: int = 8501, *,
          host: str = "0.0.0.0", poll_seconds: float = 1.0, batching: BatchingOptions | None = None,
          use_model_server: bool | None = None, model_server_binary: str | None = None,
          dev_options: "DevServerOptions | None" = None, extra_model_server_args: Sequence[str] = (),
          grace: float = 10.0) -> int:
    """Serves the latest version of a model from a TF Serving model base until SIGINT/SIGTERM.

    Args:
      model_base: ``<base>`` holding ``<model_name>/<version>/`` (or one model's directory).
      model_name: the name clients use (default: inferred from the directory, see
        :func:`~hrnet_tfx.serving.model_base.resolve_model`).
      grpc_port, rest_port: the two endpoints (``rest_port=0``: no REST endpoint, as in TF Serving).
      host: interface the development server binds (``tensorflow_model_server`` binds every interface).
      poll_seconds: how often to look for new versions.
      batching: TF Serving's batching (``--enable_batching`` with these parameters); None: off. The
        development server does not batch (it logs a warning and serves each request on its own).
      use_model_server: True: require ``tensorflow_model_server``; False: always the development server;
        None: the model server when it is on PATH.
      model_server_binary: the model server executable (default: ``tensorflow_model_server`` on PATH).
      dev_options: development server only: its limits (host, ports and poll interval are set from the
        arguments above).
      extra_model_server_args: more ``tensorflow_model_server`` flags.
      grace: development server only: seconds in-flight requests get at shutdown.

    Returns:
      The exit code: 0 after a clean shutdown (the model server's own code when it runs).

    Raises:
      FileNotFoundError: ``use_model_server=True`` and the binary is not found.
      ValueError: the model base does not name one model.
    """
    name, model_dir = resolve_model(model_base, model_name)
    binary = shutil.which(model_server_binary or MODEL_SERVER) if use_model_server is not False else None
    if use_model_server and binary is None:
        raise FileNotFoundError(f"{model_server_binary or MODEL_SERVER} is not on PATH; install TF Serving or let "
                                "the development server run")
    if binary is not None:
        params = write_batching_parameters(batching) if batching else None
        try:
            command = model_server_command(binary, name, model_dir, grpc_port=grpc_port, rest_port=rest_port,
                                           poll_seconds=poll_seconds, batching_parameters_file=params,
                                           extra_args=extra_model_server_args)
            log.info("serving model '%s' from %s with TF Serving (%s): %s", name, model_dir, binary, " ".join(command))
            return run_model_server(command)
        finally:
            if params:
                os.unlink(params)

    from hrnet_tfx.serving.dev.server import DevServerOptions, run_dev_server

    if use_model_server is None:
        log.info("%s is not on PATH: serving model '%s' from %s with the development server (same gRPC and REST "
                 "protocols)", model_server_binary or MODEL_SERVER, name, model_dir)
    else:
        log.info("serving model '%s' from %s with the development server", name, model_dir)
    if batching is not None:
        log.warning("batching is done by tensorflow_model_server; the development server runs each request on "
                    "its own")
    options = dataclasses.replace(dev_options or DevServerOptions(), host=host, grpc_port=grpc_port,
                                  rest_port=rest_port or None, poll_seconds=poll_seconds)
    return run_dev_server(model_base, name, options, grace=grace)
