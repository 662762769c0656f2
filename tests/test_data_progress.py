"""Progress reporting across Beam workers: per-worker count files summed by the launcher."""

import logging
import time

import math
import re

import pytest

from hrnet_tfx.data.progress import ProgressMonitor, ProgressWriter, format_duration, format_progress, read_progress


def test_format_progress():
    assert format_progress(250, 1000, 10.0) == "250/1000 img (25.0%), 25.0 img/s, ETA 0:00:30"
    assert format_progress(10, None, 2.0, "rec") == "10 rec, 5.0 rec/s"
    assert format_progress(0, 1000, 0.0).endswith("ETA ?")
    assert format_progress(1, 100001, 1.0).endswith("ETA 1d 03:46:40")  # past a day: no wrap


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00:00"),
    (42.4, "0:00:42"),
    (3599.6, "1:00:00"),
    (86399, "23:59:59"),
    (86400, "1d 00:00:00"),
    (100000, "1d 03:46:40"),  # > 24 h: time.strftime of gmtime would show 03:46:40
    (8 * 86400 + 3661, "8d 01:01:01"),  # > 1 week
    (400 * 86400, "400d 00:00:00"),
    (math.nan, "?"),
    (math.inf, "?"),
    (-1, "?"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_trainer_progress_line_uses_the_duration_format():
    from hrnet_tfx.training.loop import _Progress

    progress = _Progress(total_steps=1_000_000, start_step=0, steps_per_epoch=100, workers=2)
    progress.t0 -= 10.0  # 10 s for the first step: 999,999 steps to go take ~115.7 days
    text, _ = progress.line(1, {"loss": 1.0, "top1": 0.5, "top5": 0.9}, 0.1, 64)
    assert re.search(r"ETA 115d 17:4[67]:\d\d$", text), text  # the ms this test takes add seconds


def test_writers_counts_are_summed(tmp_path):
    assert read_progress(str(tmp_path / "missing")) == 0
    a, b = ProgressWriter(str(tmp_path), interval=3600), ProgressWriter(str(tmp_path), interval=3600)
    a.add(5)  # the first add always writes
    b.add(2)
    a.add(3)  # not yet due
    assert read_progress(str(tmp_path)) == 7
    a.add(0, force=True)
    assert read_progress(str(tmp_path)) == 10


def test_monitor_logs_done_rate_and_eta(tmp_path, caplog):
    writer = ProgressWriter(str(tmp_path), interval=0)
    with caplog.at_level(logging.INFO, logger="hrnet_tfx.data.progress"):
        with ProgressMonitor(str(tmp_path), total=4, poll=0.05, log_every=0.0):
            for _ in range(4):
                writer.add()
                time.sleep(0.06)
    assert any("4/4 img (100.0%)" in r.message and "img/s" in r.message for r in caplog.records)
