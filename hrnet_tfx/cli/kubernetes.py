"""``hrnet-tfx serving-manifests``: Kubernetes manifests (ConfigMap + Deployment + Service) that serve the
Pusher's model base with the real TF Serving image; see :mod:`hrnet_tfx.kubernetes.serving`. Also the
option parsing the manifest commands share (``hrnet-tfx mpijob`` too)."""

from __future__ import annotations

import click


def key_value_pairs(items, what: str) -> dict[str, str]:
    """``KEY=VALUE`` option values (``--env``, ``--node-selector``) as a dict; ``what`` names the option."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


@click.command("serving-manifests")
@click.option("--model-base", required=True,
              help="The Pusher's model base (the pipeline's serving_base): gs://BUCKET/serving, or a path under "
                   "--mount-path with --pvc.")
@click.option("--model-name", default="hrnet", show_default=True, help="Served model name (<model-base>/<name>/).")
@click.option("--image", default="", help="TF Serving image [default: tensorflow/serving:2.16.1, -gpu with --gpus].")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True, help="GPUs per pod.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--cpu", default="4", show_default=True, help="CPU per pod (request = limit).")
@click.option("--memory", default="8Gi", show_default=True, help="Memory per pod (request = limit).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Server-side batching: most images in one model run.")
@click.option("--batch-timeout-micros", type=click.IntRange(min=0), default=1000, show_default=True,
              help="How long a request waits for others to batch with.")
@click.option("--no-batching", is_flag=True, help="Run every request on its own.")
@click.option("--poll-seconds", type=click.IntRange(min=1), default=10, show_default=True,
              help="How often TF Serving looks for newly pushed versions.")
@click.option("--service-type", type=click.Choice(["ClusterIP", "LoadBalancer", "NodePort"]), default="ClusterIP",
              show_default=True)
@click.option("--service-account", default="", help="Service account of the pods (e.g. Workload Identity for gs://).")
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE", help="Node label (repeatable).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment of the server (repeatable).")
@click.option("--pvc", default="", help="PersistentVolumeClaim holding the model base (instead of a bucket).")
@click.option("--mount-path", default="/models", show_default=True, help="Where --pvc is mounted.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--name", default="hrnet-serving", show_default=True, help="Deployment/Service name (a DNS label).")
@click.option("--output", "-o", default="-", show_default=True, help="Manifest file; - writes to stdout.")
def serving_manifests(model_base, model_name, image, gpus, replicas, cpu, memory, max_batch_size,
                      batch_timeout_micros, no_batching, poll_seconds, service_type, service_account, node_selector,
                      env, pvc, mount_path, namespace, name, output):
    """Write a Deployment + Service running TF Serving on a pushed model base, for kubectl apply -f.

    Example: hrnet-tfx serving-manifests --model-base gs://BUCKET/serving --model-name hrnet --gpus 1
    -o serve.yaml; then kubectl apply -f serve.yaml and kubectl port-forward svc/hrnet-serving 8500 8501.
    """
    from hrnet_tfx.kubernetes.objects import write_manifests
    from hrnet_tfx.kubernetes.serving import ServingSpec, serving_manifests as manifests
    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.serving.batching import BatchingOptions

    try:
        batching = None if no_batching else BatchingOptions(max_batch_size=max_batch_size,
                                                            batch_timeout_micros=batch_timeout_micros)
        spec = ServingSpec(
            model_base=model_base, model_name=model_name, name=name, namespace=namespace, image=image,
            replicas=replicas, gpus=gpus, cpu=cpu, memory=memory, batching=batching, poll_seconds=poll_seconds,
            service_type=service_type, service_account=service_account,
            node_selector=key_value_pairs(node_selector, "--node-selector"), env=key_value_pairs(env, "--env"),
            pvc=pvc, mount_path=mount_path)
        write_manifests(manifests(spec), output,
                        header=f"# TF Serving ({spec.image}) for {spec.model_dir}, written by hrnet-tfx\n")
    except (ConfigError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if output != "-":
        click.echo(f"wrote {output}: kubectl apply -f {output}; then kubectl port-forward svc/{name} "
                   f"8500 8501 and hrnet-tfx predict --server localhost:8500 IMAGE", err=True)
