"""Writing YAML documents for other tools (kubectl, KFP): readable, complete or not at all.

The files are local by nature: ``kubectl apply -f`` and KFP's upload read them from the machine that runs
the command (the paths *inside* them may be buckets). They get the permissions of any new file (0666
less the umask, usually 0644), not the 0600 of a private temporary file.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Mapping, Sequence


def write_yaml_documents(objs: Sequence[Mapping], path: str, header: str = "") -> None:
    """Writes ``objs`` as one multi-document YAML; ``"-"`` is stdout.

    Multi-line strings come out as ``|`` blocks and shared sub-objects in full (no ``&anchors``). A file
    is written atomically (a temporary file beside it, then renamed), so a failed write never leaves a
    half-written file; ``header`` (e.g. ``# comment`` lines) goes first.
    """
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def represent_str(dumper, text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)

    Dumper.add_representer(str, represent_str)
    dump = dict(Dumper=Dumper, sort_keys=False, default_flow_style=False, explicit_start=True)
    if path == "-":
        sys.stdout.write(header)
        yaml.dump_all(list(objs), sys.stdout, **dump)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header)
            yaml.dump_all(list(objs), f, **dump)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
