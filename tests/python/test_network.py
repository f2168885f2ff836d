"""Sandbox networks through the Python SDK: the default reaches out, the policy switch,
allow_out as default deny, deny_out precedence, live updates and CLEAR_NETWORK_POLICY.

"The internet" is a test host in a network namespace this module creates, on a /29 of
TEST-NET-3 (203.0.113.0/24), serving one file over HTTP. Nothing here sends traffic to any
other address: the server's sandboxes send DNS to 127.0.0.1 (conftest), which goes nowhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorlake.sandbox import CLEAR_NETWORK_POLICY, NetworkConfig

GREETING = "hello from the python test net"
SLOTS = Path("/run/hutch-test/testnet")
PORT = 8080

# Python's HTTPServer looks its own address up in DNS at bind; this one does not.
SERVER = """
import functools, http.server, socketserver, sys
class S(http.server.ThreadingHTTPServer):
    def server_bind(self): socketserver.TCPServer.server_bind(self)
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
S((sys.argv[1], int(sys.argv[2])), h).serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def test_host(tmp_path_factory):
    SLOTS.mkdir(parents=True, exist_ok=True)
    slot = None
    for k in range(31, -1, -1):
        try:
            fd = os.open(SLOTS / str(k), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            slot = k
            break
        except FileExistsError:
            continue
    assert slot is not None, "no free TEST-NET slot"
    ns, ifname = f"htest-{slot}", f"ht{slot}"
    host_side, addr = f"203.0.113.{slot * 8 + 1}", f"203.0.113.{slot * 8 + 2}"
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    subprocess.run(["ip", "link", "delete", ifname], capture_output=True)
    _ip("netns", "add", ns)
    _ip("link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("addr", "add", f"{host_side}/29", "dev", ifname)
    _ip("link", "set", ifname, "up")
    _ip("-n", ns, "addr", "add", f"{addr}/29", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "route", "add", "default", "via", host_side)
    www = tmp_path_factory.mktemp("www")
    (www / "hello.txt").write_text(GREETING + "\n")
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, addr, str(PORT), str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((addr, PORT), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the test host's server did not start"
                time.sleep(0.05)
        yield addr
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        (SLOTS / str(slot)).unlink(missing_ok=True)


# busybox's nc: the default (Debian) image has none.
BUSYBOX = "hutch/minimal"


def _fetch(sandbox, addr: str) -> bool:
    """Whether the sandbox gets the test host's file (busybox nc, 2 s to connect)."""
    script = f"printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} {PORT}"
    result = sandbox.run("sh", ["-c", script])
    return result.exit_code == 0 and GREETING in result.stdout


def _settles(sandbox, addr: str, reachable: bool) -> bool:
    """A policy applies to new connections within a second."""
    deadline = time.monotonic() + 1
    while True:
        if _fetch(sandbox, addr) == reachable:
            return True
        if time.monotonic() > deadline:
            return False


def test_the_default_reaches_out_and_a_closed_policy_does_not(client, test_host):
    sb = client.create_and_connect(image=BUSYBOX)
    try:
        assert client.get(sb.sandbox_id).network_policy.allow_internet_access
        assert _fetch(sb, test_host)
    finally:
        client.delete(sb.sandbox_id)
    closed = client.create_and_connect(image=BUSYBOX, allow_internet_access=False)
    try:
        info = client.get(closed.sandbox_id)
        assert not info.network_policy.allow_internet_access
        assert not _fetch(closed, test_host)
    finally:
        client.delete(closed.sandbox_id)


def test_allow_out_deny_out_and_live_updates(client, test_host):
    sb = client.create_and_connect(image=BUSYBOX, allow_out=["198.51.100.7"])
    try:
        assert not _fetch(sb, test_host), "allow_out is default deny"
        client.update_sandbox(sb.sandbox_id, network=NetworkConfig(allow_out=[test_host]))
        assert _settles(sb, test_host, True)
        client.update_sandbox(
            sb.sandbox_id,
            network=NetworkConfig(allow_out=["203.0.113.0/24"], deny_out=[test_host]),
        )
        assert _settles(sb, test_host, False), "deny_out takes precedence"
        client.update_sandbox(sb.sandbox_id, network=CLEAR_NETWORK_POLICY)
        assert _settles(sb, test_host, True)
        assert client.get(sb.sandbox_id).network_policy.allow_out == []
    finally:
        client.delete(sb.sandbox_id)
