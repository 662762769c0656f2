"""The one reader of request images (client, ``hrnet-tfx predict``, warm-up writer): local and bucket files,
bounded size, errors that name the file."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from click.testing import CliRunner

from hrnet_tfx.cli import main
from hrnet_tfx.serving.client import Client
from hrnet_tfx.serving.images import MAX_IMAGE_BYTES, ImageFileError, read_image, read_images

from conftest import free_port


def test_reads_bytes_local_files_and_bucket_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"local")
    bucket = f"ram://images-{os.getpid()}"
    tf.io.gfile.makedirs(bucket)
    with tf.io.gfile.GFile(f"{bucket}/b.jpg", "wb") as f:
        f.write(b"bucket")
    assert read_images([b"raw", tmp_path / "a.jpg", f"{bucket}/b.jpg", memoryview(b"view")]) == [
        b"raw", b"local", b"bucket", b"view"]


def test_errors_name_the_file_and_the_limit(tmp_path):
    with pytest.raises(ImageFileError, match=rf"^cannot read image {re.escape(str(tmp_path / 'nope.jpg'))}: "
                                             "No such file or directory$"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageFileError, match=r"^cannot read warm-up image ram://none/x.jpg: no such file$"):
        read_image("ram://none/x.jpg", what="warm-up image")
    with pytest.raises(ImageFileError, match=rf"^cannot read image {re.escape(str(tmp_path))}: Is a directory$"):
        read_image(tmp_path)
    with pytest.raises(ImageFileError, match=rf"^image \(bytes\) is larger than {MAX_IMAGE_BYTES} bytes$"):
        read_image(b"\0" * (MAX_IMAGE_BYTES + 1))


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    """An 8 GiB (sparse) file under an address-space limit of the process's size + 256 MiB: reading it whole
    would fail with MemoryError; the bounded reader reads 16 MiB + 1 byte and refuses it."""
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)
    script = textwrap.dedent(f"""
        import resource
        from hrnet_tfx.serving.images import ImageFileError, read_image
        import tensorflow as tf
        tf.constant(0)  # TensorFlow's runtime is up before the limit
        size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), size + (256 << 20)))
        try:
            read_image({str(huge)!r})
        except ImageFileError as e:
            print(e)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"image {huge} is larger than {MAX_IMAGE_BYTES} bytes"


def test_client_refuses_an_unreadable_file_before_sending(tmp_path):
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as client:  # nothing listens: nothing may be sent
        with pytest.raises(ImageFileError, match=rf"^cannot read image {re.escape(str(tmp_path))}/gone.jpg: No such"):
            client.predict_images([b"jpeg", str(tmp_path / "gone.jpg")])


def test_predict_command_reports_the_oversized_file(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)
    result = CliRunner().invoke(main, ["predict", "--server", f"127.0.0.1:{free_port()}", "--json", str(big)])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[0] == (
        f'{{"image": "{big}", "error": "image {big} is larger than {MAX_IMAGE_BYTES} bytes"}}')
    assert "1 of 1 images could not be classified" in result.output and "Traceback" not in result.output


def test_predict_command_refuses_a_fifo_without_blocking(tmp_path):
    """A FIFO nobody writes to would block a plain open() forever; the reader refuses it at once (the
    subprocess timeout turns a regression into a failure instead of a hung test)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "hrnet_tfx.cli", "predict", "--server", f"127.0.0.1:{free_port()}",
                           "--json", str(fifo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == (
        f'{{"image": "{fifo}", "error": "cannot read image {fifo}: Is a FIFO (named pipe)"}}')
    assert "Traceback" not in done.stderr
