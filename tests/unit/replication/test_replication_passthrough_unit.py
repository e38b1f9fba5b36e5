"""Pure parts of the pass-through: mountinfo parsing and the recording sink's journal."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from hakit.replication import NewNode, RecordingSink

pytest.importorskip("pyfuse3", reason="pyfuse3 is not installed (pip install pyfuse3)")

from hakit.replication.passthrough import FSTYPE, find_mounts

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "57 22 0:45 / /srv/my\\040data rw,nosuid,nodev - fuse.hakit-rfs hakit-rfs rw,user_id=0\n"
    "58 57 0:46 / /srv/my\\040data rw,nosuid,nodev - fuse.hakit-rfs hakit-rfs rw,user_id=0\n"
    "59 22 0:47 / /srv/other rw - fuse.sshfs host:/x rw\n"
)


def test_find_mounts_decodes_escaped_mount_points_and_keeps_the_stack_order() -> None:
    found = find_mounts("/srv/my data", MOUNTINFO)
    assert [(m.mount_id, m.fstype, m.source) for m in found] == [
        (57, FSTYPE, "hakit-rfs"),
        (58, FSTYPE, "hakit-rfs"),
    ]
    assert find_mounts("/srv/other", MOUNTINFO)[0].fstype == "fuse.sshfs"
    assert find_mounts("/srv/none", MOUNTINFO) == []


def test_recording_sink_keeps_order_and_journals_json_lines() -> None:
    out = io.StringIO()
    sink = RecordingSink(out)
    node = NewNode(b"d/f\xff", 0o100644, 1, 2, 0, 10, 20, 30)

    async def scenario() -> None:
        await sink.create(node)
        await sink.write(7, b"d/f\xff", 4096, b"x" * 10, 40)
        await sink.rename(b"d/f\xff", b"g", 1, 50, 60)

    asyncio.run(scenario())
    assert sink.ops() == ["create", "write", "rename"]
    assert sink.mutations[1].args == (7, b"d/f\xff", 4096, 10)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["args"][0]["path"] == "d/f\udcff"  # undecodable bytes survive (surrogateescape)
    assert lines[2] == {"op": "rename", "args": ["d/f\udcff", "g", 1]}
