"""The ``hrnet-tfx`` command. Each subcommand group lives in its own module and imports TensorFlow
only when a command runs, so ``hrnet-tfx --help`` is instant.

Logging: hrnet-tfx's own messages (progress with rates and ETA, results) at INFO, everything else
(TensorFlow, TFX, Beam) at WARNING; ``-v`` shows everything at DEBUG. Known noise is dropped by message
(:mod:`hrnet_tfx.quiet`) before TensorFlow loads.
"""

import logging

import hrnet_tfx
from hrnet_tfx import quiet

quiet.install()

import click  # noqa: E402

from hrnet_tfx.cli.data import data  # noqa: E402
from hrnet_tfx.cli.kubernetes import serving_manifests  # noqa: E402
from hrnet_tfx.cli.models import models  # noqa: E402
from hrnet_tfx.cli.mpijob import mpijob  # noqa: E402
from hrnet_tfx.cli.pipeline import pipeline  # noqa: E402
from hrnet_tfx.cli.serving import predict, serve  # noqa: E402
from hrnet_tfx.cli.train import train  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(hrnet_tfx.__version__, prog_name="hrnet-tfx")
@click.option("-v", "--verbose", is_flag=True, help="Log everything (TensorFlow, TFX, Beam too) at DEBUG level.")
def main(verbose: bool) -> None:
    """Train and serve HRNet image classifiers with TFX, Horovod and TF Serving."""
    root = logging.getLogger()
    if root.handlers:  # configured by whoever called us (a test runner, an embedding program): theirs
        return
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(quiet.OwnInfoOnly())


main.add_command(models)
main.add_command(data)
main.add_command(train)
main.add_command(mpijob)
main.add_command(serve)
main.add_command(serving_manifests)
main.add_command(predict)
main.add_command(pipeline)
