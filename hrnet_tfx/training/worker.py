"""One training worker: ``python -m hrnet_tfx.training.worker --config FILE [--eval-only]``.

``horovodrun``, ``mpirun`` or a Kubeflow MPIJob start this once per process; rank and size come from
Horovod. The config is a training config file (YAML/JSON, see :class:`TrainConfig`).
"""

import argparse
import logging
import sys
import time

import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from hrnet_tfx import quiet

quiet.install()  # before TensorFlow loads: no cuFFT/cuDNN registration lines or known log noise per worker

_FOLLOWER_EXIT_DELAY_S = 3.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="training config file (YAML or JSON)")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--allow-changed-config", action="store_true",
                        help="resume although the settings differ from the saved train_config.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker] %(message)s")
    from hrnet_tfx.models import ConfigError, WeightImportError
    from hrnet_tfx.training.config import TrainConfig
    from hrnet_tfx.training.loop import ChiefFailedError, run

    try:
        run(TrainConfig.from_file(args.config, args.overrides), eval_only=args.eval_only,
            allow_changed_config=args.allow_changed_config)
    except (ConfigError, WeightImportError, ChiefFailedError) as e:  # the user's to fix: the reason, no traceback
        logging.getLogger("hrnet_tfx.training.worker").error("%s", e)
        if isinstance(e, ChiefFailedError):
            # Give rank 0, whose error is the cause, the head start to exit first: horovodrun and mpirun name the
            # first process that exited non-zero. A head start, not a guarantee (a loaded machine may reorder).
            time.sleep(_FOLLOWER_EXIT_DELAY_S)
        sys.exit(1)


if __name__ == "__main__":
    main()
