"""Files through the proxy: write, read, list, delete, and a large binary round trip."""

import hashlib
import os

import pytest
from tensorlake.sandbox import RemoteAPIError

BIG_FILE_BYTES = 20 * 1024 * 1024


def test_write_read_list_delete(sandbox):
    content = b"hello from the conformance suite\n"
    sandbox.write_file("/tmp/hello.txt", content)

    assert sandbox.read_file("/tmp/hello.txt").value == content

    listing = sandbox.list_directory("/tmp")
    assert listing.path == "/tmp"
    entries = {e.name: e for e in listing.entries}
    assert "hello.txt" in entries, f"entries: {sorted(entries)}"
    assert not entries["hello.txt"].is_dir
    assert entries["hello.txt"].size == len(content)

    sandbox.delete_file("/tmp/hello.txt")

    with pytest.raises(RemoteAPIError) as raised:
        sandbox.read_file("/tmp/hello.txt")
    assert raised.value.status_code == 404
    assert "hello.txt" not in {e.name for e in sandbox.list_directory("/tmp").entries}


def test_listing_marks_directories(sandbox):
    assert sandbox.run("mkdir", ["-p", "/tmp/listed/sub"]).exit_code == 0
    sandbox.write_file("/tmp/listed/file.bin", b"\x00\x01\x02")

    entries = {e.name: e for e in sandbox.list_directory("/tmp/listed").entries}

    assert set(entries) == {"sub", "file.bin"}
    assert entries["sub"].is_dir
    assert entries["file.bin"].size == 3


def test_20_mib_random_file_round_trips_byte_exact(sandbox):
    content = os.urandom(BIG_FILE_BYTES)
    digest = hashlib.sha256(content).hexdigest()

    sandbox.write_file("/tmp/big.bin", content)

    # The sandbox itself sees the same bytes, not only the round trip.
    inside = sandbox.run("sha256sum", ["/tmp/big.bin"])
    assert inside.exit_code == 0, inside.stderr
    assert inside.stdout.split()[0] == digest
    entries = {e.name: e for e in sandbox.list_directory("/tmp").entries}
    assert entries["big.bin"].size == BIG_FILE_BYTES

    back = sandbox.read_file("/tmp/big.bin").value
    assert len(back) == BIG_FILE_BYTES
    assert hashlib.sha256(back).hexdigest() == digest
