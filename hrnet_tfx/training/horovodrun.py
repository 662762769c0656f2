"""``horovodrun`` as the launcher runs it: ``python -m hrnet_tfx.training.horovodrun -np N -H localhost:N --gloo
CMD...``.

It is Horovod's own command line (``horovod.runner.launch.run_commandline``, all the ``horovodrun`` script
runs), except for one thing: when workers fail, Horovod ends with a traceback of its own runner after the
workers have printed their reasons; here that is one line naming the first failed process and its exit
code, and the exit code is 1 as with ``horovodrun``. This module imports no TensorFlow.
"""

import sys

FAILED_WORKERS = "Horovod detected that one or more processes exited with non-zero status"
"""The start of the RuntimeError Horovod 0.28.1's Gloo runner raises when a worker exits with an error."""


def main(argv=None) -> int:
    """Runs ``horovodrun`` with ``argv`` (default: this process's arguments); returns its exit code."""
    from horovod.runner.launch import run_commandline

    sys.argv = ["horovodrun", *(sys.argv[1:] if argv is None else argv)]
    try:
        run_commandline()
    except RuntimeError as e:
        if not str(e).startswith(FAILED_WORKERS):
            raise
        print(f"horovodrun: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
