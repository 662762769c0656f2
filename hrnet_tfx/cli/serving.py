"""``hrnet-tfx serve`` (TF Serving, or the development server) and ``hrnet-tfx predict`` (a client)."""

from __future__ import annotations

import json
import os

import click


@click.command()
@click.argument("model_base", type=click.Path(file_okay=False))
@click.option("--model-name", default=None,
              help="Name clients use (default: the one model under MODEL_BASE, or MODEL_BASE's own name if it holds "
                   "version directories). Needed to start before the first push.")
@click.option("--grpc-port", default=8500, show_default=True, type=click.IntRange(1, 65535))
@click.option("--rest-port", default=8501, show_default=True, type=click.IntRange(0, 65535),
              help="0: no REST endpoint (as tensorflow_model_server's --rest_api_port=0).")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Interface the development server binds (tensorflow_model_server binds all).")
@click.option("--poll-seconds", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="How often to look for new versions (--file_system_poll_wait_seconds).")
@click.option("--enable-batching", is_flag=True, help="Merge concurrent requests into batches (TF Serving's batching).")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-timeout-micros", default=1000, show_default=True, type=click.IntRange(min=0),
              help="How long a request waits for others to batch with.")
@click.option("--num-batch-threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="Batches run at once (0: number of CPUs).")
@click.option("--max-enqueued-batches", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--max-image-pixels", default=25_000_000, show_default=True, type=click.IntRange(min=0),
              help="Development server: reject images larger than this (width x height; 0: no limit).")
@click.option("--server", "which", type=click.Choice(["auto", "tf-serving", "dev"]), default="auto", show_default=True,
              help="auto: tensorflow_model_server when it is on PATH, else the development server.")
@click.option("--model-server-binary", default=None, help="tensorflow_model_server executable to run.")
def serve(model_base, model_name, grpc_port, rest_port, host, poll_seconds, enable_batching, max_batch_size,
          batch_timeout_micros, num_batch_threads, max_enqueued_batches, max_image_pixels, which, model_server_binary):
    """Serve the latest model version under MODEL_BASE over TF Serving's gRPC and REST APIs.

    MODEL_BASE holds <model_name>/<version>/saved_model.pb (what the Pusher writes); new versions are picked
    up as they appear. Runs tensorflow_model_server when it is on PATH, else a development server speaking
    the same protocols. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from hrnet_tfx.serving.batching import BatchingOptions
    from hrnet_tfx.serving.server import serve as run

    batching = None
    if enable_batching:
        batching = BatchingOptions(max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros,
                                   num_batch_threads=num_batch_threads, max_enqueued_batches=max_enqueued_batches)
    use = {"auto": None, "tf-serving": True, "dev": False}[which]
    try:
        code = run(model_base, model_name, grpc_port, rest_port, host=host, poll_seconds=poll_seconds,
                   batching=batching, use_model_server=use, model_server_binary=model_server_binary,
                   max_image_pixels=max_image_pixels or None)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if code:
        raise SystemExit(code)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--server", "address", default=None,
              help="HOST:PORT of the model server [default: localhost:8500, or localhost:8501 with --rest].")
@click.option("--rest", is_flag=True, help="Use the REST API instead of gRPC.")
@click.option("--model-name", default="hrnet", show_default=True)
@click.option("--version", "model_version", default=None, type=click.IntRange(min=1),
              help="Ask for this version (default: the latest served).")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per request.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for each answer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def predict(images, address, rest, model_name, model_version, top_k, batch_size, timeout, as_json):
    """Print the top labels and scores a served model gives each IMAGE (JPEG, PNG, GIF, BMP, WebP)."""
    from hrnet_tfx.serving.client import Client
    from hrnet_tfx.serving.errors import ServingError

    address = address or ("localhost:8501" if rest else "localhost:8500")
    try:
        with Client(address, rest=rest, model_name=model_name, version=model_version, timeout=timeout) as client:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                for path, ranking in zip(chunk, client.predict_images(list(chunk), top_k=top_k)):
                    if as_json:
                        click.echo(json.dumps({"image": path, "top_k": [[label, score] for label, score in ranking]}))
                        continue
                    click.echo(os.fspath(path))
                    for rank, (label, score) in enumerate(ranking, 1):
                        click.echo(f"  {rank}. {score:8.4f}  {label}")
    except (ServingError, ValueError) as e:
        raise click.ClickException(str(e)) from None
