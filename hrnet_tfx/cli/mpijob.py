"""``hrnet-tfx mpijob``: Kubernetes manifests (ConfigMap + Kubeflow MPIJob) for multi-node Horovod
training; the training config is resolved exactly as ``hrnet-tfx train`` resolves it."""

from __future__ import annotations

import os

import click

from hrnet_tfx.cli.kubernetes import key_value_pairs
from hrnet_tfx.cli.train import resolve_config


def _files_instead_of(data_dir: str) -> str:
    """What to pass instead of ``--data`` when this machine cannot read it (the pods read the files)."""
    from hrnet_tfx.data import layout
    from hrnet_tfx.data.features import LABEL_MAP_FILENAME

    return (f"Or name the files instead of --data, which reads nothing here: -s train_files="
            f"'{layout.split_file_pattern(data_dir, layout.TRAIN)}' -s eval_files="
            f"'{layout.split_file_pattern(data_dir, layout.EVAL)}' -s label_map="
            f"{os.path.join(data_dir, LABEL_MAP_FILENAME)}, and -s num_classes=N unless 1000 "
            "(-s num_train_examples=N spares rank 0 counting the records).")


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Training config (YAML/JSON).")
@click.option("--model", help="Registered variant, packaged config, or absolute network config path in the pods.")
@click.option("--data", "data_dir", help="Converted data or inception TFRecords, readable here and at the same "
              "path in the pods (gs://..., or a path under --mount-path).")
@click.option("--model-dir", help="Checkpoints and logs: gs://... or a path under --mount-path (required).")
@click.option("--export-dir", help="Write the serving SavedModel here at the end (same rules as --model-dir).")
@click.option("--init-from", help="Start from PyTorch weights, a SavedModel or a checkpoint (absolute or URI).")
@click.option("--image", required=True, help="Container image with hrnet-tfx, Horovod (NCCL), OpenMPI and sshd.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker pods (nodes).")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True,
              help="GPUs per worker, one process each; 0 trains on CPU (one process per worker).")
@click.option("--cpu", default="", help="CPU request per worker, e.g. 8.")
@click.option("--memory", default="", help="Memory request per worker, e.g. 64Gi.")
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE", help="Worker node label (repeatable).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment of every rank (repeatable).")
@click.option("--pvc", default="", help="PersistentVolumeClaim with the data (and model_dir), mounted on workers.")
@click.option("--host-path", default="", help="Node directory to mount instead of a PVC.")
@click.option("--mount-path", default="/data", show_default=True, help="Where --pvc/--host-path is mounted.")
@click.option("--service-account", default="", help="Service account of the pods (e.g. for gs:// access).")
@click.option("--namespace", default="default", show_default=True)
@click.option("--name", default="hrnet-train", show_default=True, help="MPIJob name (a DNS label).")
@click.option("--eval-only", is_flag=True, help="Evaluate the latest checkpoint (or --init-from) and exit.")
@click.option("--allow-changed-config", is_flag=True,
              help="Resume although model, data, batch or schedule differ from --model-dir's train_config.json.")
@click.option("--output", "-o", default="-", show_default=True, help="Manifest file; - writes to stdout.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any training config field, e.g. -s epochs=90 -s per_worker_batch_size=64.")
def mpijob(config_file, model, data_dir, model_dir, export_dir, init_from, image, workers, gpus_per_worker, cpu,
           memory, node_selector, env, pvc, host_path, mount_path, service_account, namespace, name, eval_only,
           allow_changed_config, output, overrides):
    """Write a Kubeflow MPIJob (mpi-operator v2) for multi-node Horovod training, for kubectl apply -f.

    Runs workers x gpus-per-worker Horovod processes (global batch: per_worker_batch_size, 32 by
    default, times that); settings are layered as in 'hrnet-tfx train'.
    Example: hrnet-tfx mpijob --image REGISTRY/hrnet-tfx:0.1.0 --workers 4 --gpus-per-worker 8
    --data gs://bucket/imagenet --model-dir gs://bucket/runs/w18 -o w18.yaml
    """
    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.kubernetes.mpijob import MPIJobSpec, mpijob_manifests
    from hrnet_tfx.kubernetes.objects import write_manifests

    try:
        config = resolve_config(config_file, data_dir, overrides, model=model, model_dir=model_dir,
                                export_dir=export_dir, init_from=init_from,
                                unreadable_hint=_files_instead_of(data_dir) if data_dir else "")
        spec = MPIJobSpec(
            name=name, image=image, namespace=namespace, workers=workers, gpus_per_worker=gpus_per_worker,
            cpu=cpu, memory=memory, node_selector=key_value_pairs(node_selector, "--node-selector"),
            env=key_value_pairs(env, "--env"), pvc=pvc, host_path=host_path, mount_path=mount_path,
            service_account=service_account,
        )
        write_manifests(mpijob_manifests(config, spec, eval_only=eval_only,
                                         allow_changed_config=allow_changed_config), output)
    except (ConfigError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if output != "-":
        click.echo(f"wrote {output}: kubectl apply -f {output}", err=True)
