"""A sandbox's own servers through the Python SDK: exposed ports at the URL the SDK builds
from ``ingress_endpoint``, ``expose_ports``/``unexpose_ports``/``get_port_access``, the typed
403 for an unexposed port, and ``create_tunnel`` to a port nobody exposed.

Everything stays on loopback: the sandbox has no network, ports ride its agent.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

from tensorlake.sandbox import sandbox_url_from_ingress_endpoint

PORT = 8080
CONTENT = "served from inside the sandbox"


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    """GET through the proxy. ``*.localhost`` is loopback: the request goes to 127.0.0.1
    with the Host the URL names, as a browser would send it."""
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    host, _, port = authority.rpartition(":")
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/{path}", headers={"Host": authority})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_for(url: str) -> tuple[int, str]:
    deadline = time.monotonic() + 20
    while True:
        status, body = _get(url)
        if status != 502 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def test_exposed_ports_and_tunnels(client):
    # busybox's httpd: the default (Debian) image has none.
    sb = client.create_and_connect(
        image="hutch/minimal", allow_internet_access=False, exposed_ports=[PORT]
    )
    try:
        sb.start_process(
            "sh",
            ["-c", f"mkdir -p /w && echo '{CONTENT}' > /w/index.html && httpd -f -p 127.0.0.1:{PORT} -h /w"],
        )
        access = client.get_port_access(sb.sandbox_id)
        assert access.exposed_ports == [PORT]
        assert access.ingress_endpoint
        url = sandbox_url_from_ingress_endpoint(access.ingress_endpoint, sb.sandbox_id, PORT)
        assert url.startswith(f"http://{PORT}-{sb.sandbox_id}.localhost:")

        status, body = _wait_for(url + "/index.html")
        assert (status, body.strip()) == (200, CONTENT)

        # Another port: refused with a typed 403 until exposed, then served.
        other = sandbox_url_from_ingress_endpoint(access.ingress_endpoint, sb.sandbox_id, 8081)
        status, body = _get(other + "/")
        assert status == 403 and "PORT_NOT_EXPOSED" in body, body
        client.expose_ports(sb.sandbox_id, [8081])
        assert client.get_port_access(sb.sandbox_id).exposed_ports == [PORT, 8081]
        status, body = _get(other + "/")
        assert status == 502 and "PORT_NOT_LISTENING" in body, body

        client.unexpose_ports(sb.sandbox_id, [PORT, 8081])
        assert client.get_port_access(sb.sandbox_id).exposed_ports == []
        status, body = _get(url + "/index.html")
        assert status == 403, body

        # A tunnel reaches the unexposed port.
        tunnel = sb.create_tunnel(PORT, local_port=0)
        try:
            addr = tunnel.address()
            with socket.create_connection((addr.host, addr.port), timeout=10) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.") and CONTENT.encode() in answer, answer
        finally:
            tunnel.close()
    finally:
        sb.terminate()
