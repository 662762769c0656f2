"""``hrnet-tfx serve`` (TF Serving, or the development server) and ``hrnet-tfx predict`` (a client)."""

from __future__ import annotations

import json
import os
import re

import click

from hrnet_tfx.serving.dev.server import DevServerOptions

DEV = DevServerOptions()  # the development server's defaults


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
@click.option("--enable-batching", is_flag=True,
              help="tensorflow_model_server only: merge concurrent requests into batches (the development server "
                   "does not batch).")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-timeout-micros", default=1000, show_default=True, type=click.IntRange(min=0),
              help="How long a request waits for others to batch with.")
@click.option("--num-batch-threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="Batches run at once (0: number of CPUs).")
@click.option("--max-enqueued-batches", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--max-image-pixels", default=DEV.max_image_pixels, show_default=True, type=click.IntRange(min=0),
              help="Development server: refuse images with more pixels (width x height; 0: no limit).")
@click.option("--max-aspect-ratio", default=DEV.max_aspect_ratio, show_default=True, type=click.FloatRange(min=0),
              help="Development server: refuse images whose long side exceeds the short side this many times "
                   "(0: no limit).")
@click.option("--max-items-per-request", default=DEV.max_items_per_request, show_default=True,
              type=click.IntRange(min=1),
              help="Development server: most images or examples in one request.")
@click.option("--max-request-bytes", default=DEV.max_request_bytes, show_default=True,
              type=click.IntRange(min=1024),
              help="Development server: largest gRPC message or REST body.")
@click.option("--max-concurrent-requests", default=DEV.max_concurrent_requests, show_default=True,
              type=click.IntRange(min=1),
              help="Development server: requests in flight per protocol; more get RESOURCE_EXHAUSTED (HTTP 429).")
@click.option("--max-connections", default=DEV.max_connections, show_default=True, type=click.IntRange(min=1),
              help="Development server: open REST connections; more are refused with 503.")
@click.option("--request-timeout", default=DEV.request_timeout, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Development server: seconds a REST client has to send a request's headers, and again its body.")
@click.option("--server", "which", type=click.Choice(["auto", "tf-serving", "dev"]), default="auto", show_default=True,
              help="auto: tensorflow_model_server when it is on PATH, else the development server.")
@click.option("--model-server-binary", default=None, help="tensorflow_model_server executable to run.")
def serve(model_base, model_name, grpc_port, rest_port, host, poll_seconds, enable_batching, max_batch_size,
          batch_timeout_micros, num_batch_threads, max_enqueued_batches, max_image_pixels, max_aspect_ratio,
          max_items_per_request, max_request_bytes, max_concurrent_requests, max_connections, request_timeout, which,
          model_server_binary):
    """Serve the latest model version under MODEL_BASE over TF Serving's gRPC and REST APIs.

    MODEL_BASE holds <model_name>/<version>/saved_model.pb (what the Pusher writes); new versions are picked
    up as they appear. Runs tensorflow_model_server when it is on PATH, else a development server speaking
    the same protocols (for development and tests). Stops cleanly on Ctrl-C or SIGTERM.
    """
    from hrnet_tfx.serving.batching import BatchingOptions
    from hrnet_tfx.serving.server import serve as run

    batching = None
    if enable_batching:
        batching = BatchingOptions(max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros,
                                   num_batch_threads=num_batch_threads, max_enqueued_batches=max_enqueued_batches)
    dev_options = DevServerOptions(max_image_pixels=max_image_pixels or None, max_aspect_ratio=max_aspect_ratio or None,
                                   max_items_per_request=max_items_per_request, max_request_bytes=max_request_bytes,
                                   max_concurrent_requests=max_concurrent_requests, max_connections=max_connections,
                                   request_timeout=request_timeout)
    use = {"auto": None, "tf-serving": True, "dev": False}[which]
    try:
        code = run(model_base, model_name, grpc_port, rest_port, host=host, poll_seconds=poll_seconds,
                   batching=batching, use_model_server=use, model_server_binary=model_server_binary,
                   dev_options=dev_options)
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
    """Print the top labels and scores a served model gives each IMAGE (JPEG, PNG, GIF or BMP).

    Images go in requests of --batch-size. An image the server refuses is reported by its file name (on
    stderr, or as {"image": ..., "error": ...} with --json), the others are still answered, and the exit
    code is then 1.
    """
    from hrnet_tfx.serving.client import Client
    from hrnet_tfx.serving.errors import ServingError

    address = address or ("localhost:8501" if rest else "localhost:8500")
    failed = 0
    try:
        with Client(address, rest=rest, model_name=model_name, version=model_version, timeout=timeout) as client:
            for start in range(0, len(images), batch_size):
                for path, answer in _predict_batch(client, images[start : start + batch_size], top_k):
                    failed += isinstance(answer, str)
                    _print_answer(path, answer, as_json)
    except (ServingError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if failed:
        raise click.ClickException(f"{failed} of {len(images)} images could not be classified (see above)")


def _predict_batch(client, paths, top_k):
    """``(path, ranking or error message)`` for each file: a batch the server refuses as a bad request is
    sent again one image at a time, so one bad file costs only its own answer."""
    from hrnet_tfx.serving.errors import Code, ServingError
    from hrnet_tfx.serving.export import INPUT_IMAGES
    from hrnet_tfx.serving.images import ImageFileError

    try:
        return list(zip(paths, client.predict_images(list(paths), top_k=top_k)))
    except ServingError as e:
        if e.code not in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION):
            raise  # the server, not an image: every request would fail the same way
        if len(paths) > 1:
            return [answer for path in paths for answer in _predict_batch(client, [path], top_k)]
        return [(paths[0], re.sub(rf"^{INPUT_IMAGES}\[0\]:\s*", "", e.message, count=1))]  # the file, not the tensor
    except ImageFileError as e:
        if len(paths) > 1:
            return [answer for path in paths for answer in _predict_batch(client, [path], top_k)]
        return [(paths[0], str(e))]


def _print_answer(path, answer, as_json) -> None:
    if isinstance(answer, str):
        if as_json:
            click.echo(json.dumps({"image": os.fspath(path), "error": answer}))
        else:
            click.echo(f"error: {os.fspath(path)}: {answer}", err=True)
        return
    if as_json:
        click.echo(json.dumps({"image": os.fspath(path), "top_k": [[label, score] for label, score in answer]}))
        return
    click.echo(os.fspath(path))
    for rank, (label, score) in enumerate(answer, 1):
        click.echo(f"  {rank}. {score:8.4f}  {label}")
