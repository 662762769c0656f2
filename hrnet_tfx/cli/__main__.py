"""``python -m hrnet_tfx.cli`` runs the ``hrnet-tfx`` command."""

from hrnet_tfx.cli import main

if __name__ == "__main__":
    main()
