"""The reintegration progress bar of ``hakit state -v`` (from the rfs.N.resync.* resources)."""

from __future__ import annotations

from hakit.cli.cmd_control import progress_lines


def test_progress_bar_from_resources() -> None:
    resources: dict[str, object] = {
        "rfs.0.resync.total_bytes": "104857600",
        "rfs.0.resync.done_bytes": "52428800",
        "rfs.0.resync.files_total": "10",
        "rfs.0.resync.files_done": "4",
        "rfs.0.resync.rate_bytes_s": "10485760",
        "rfs.0.resync.eta_s": "5",
        "rfs.0.ops": "7",
    }
    (line,) = progress_lines(resources)
    assert "directory 0" in line
    assert "[" + "#" * 15 + "." * 15 + "]" in line
    assert " 50% 50.0/100.0 MiB, 4/10 files, 10.0 MiB/s, ETA 5 s" in line


def test_finished_copy_and_no_copy() -> None:
    done = {
        "rfs.1.resync.total_bytes": "10",
        "rfs.1.resync.done_bytes": "10",
        "rfs.1.resync.files_total": "1",
        "rfs.1.resync.files_done": "1",
    }
    assert progress_lines(done)[0].endswith("done")
    assert progress_lines({"rfs.0.ops": "3"}) == []
