"""Progress reporting across Beam workers: per-worker count files summed by the launcher."""

import logging
import time

from hrnet_tfx.data.progress import ProgressMonitor, ProgressWriter, format_progress, read_progress


def test_format_progress():
    assert format_progress(250, 1000, 10.0) == "250/1000 img (25.0%), 25.0 img/s, ETA 0:00:30"
    assert format_progress(10, None, 2.0, "rec") == "10 rec, 5.0 rec/s"
    assert format_progress(0, 1000, 0.0).endswith("ETA ?")
    assert format_progress(1, 100001, 1.0).endswith("ETA 27:46:40")  # past a day's hours: no wrap


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
