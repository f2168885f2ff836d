"""Drives a real `hutch serve` with the published Tensorlake Python SDK.

The session fixture starts the server on free ports with a fresh, short-pathed HUTCH_HOME,
waits for `/healthz`, and on teardown deletes every sandbox still listed, stops the server and
checks that nothing leaked: no process still refers to the state directory, no mount is left
under it, and `<home>/sandboxes` is empty. Only then is the directory removed; a leaky run
leaves it in place for inspection.

The binary is `$HUTCH_BIN`, or `target/debug/hutch` in the repository. Needs root (gVisor).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# The SDK reads these at import time and they would redirect it away from the local server
# (or make it send credentials), so they go before anything imports `tensorlake`.
for _var in (
    "TENSORLAKE_API_KEY",
    "TENSORLAKE_API_URL",
    "TENSORLAKE_SANDBOX_API_URL",
    "TENSORLAKE_SANDBOX_PROXY_URL",
    "INDEXIFY_NAMESPACE",
):
    os.environ.pop(_var, None)

from tensorlake.sandbox import Sandbox, SandboxClient, SandboxNotFoundError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# Sandbox supervisors may take a moment to go after their sandbox is deleted.
LEAK_GRACE_S = 15.0
# Generous, but short of pytest-timeout, so a stuck request surfaces as an SDK error.
REQUEST_TIMEOUT_S = 120.0

# The session's server, for failure reports.
_running_server: "HutchServer | None" = None


@dataclass
class HutchServer:
    home: Path
    api_url: str
    process: subprocess.Popen
    log_path: Path

    def sandboxes_url(self, suffix: str = "") -> str:
        return f"{self.api_url}/v1/namespaces/{NAMESPACE}/sandboxes{suffix}"

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def live_sandboxes(self) -> list[dict]:
        """Sandboxes the server lists that are not terminated, read without the SDK."""
        with urllib.request.urlopen(self.sandboxes_url(), timeout=10) as response:
            body = json.load(response)
        return [s for s in body["sandboxes"] if s.get("status") != "terminated"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hutch_bin() -> Path:
    path = Path(os.environ.get("HUTCH_BIN", REPO_ROOT / "target" / "debug" / "hutch"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not os.access(path, os.X_OK):
        pytest.exit(
            f"hutch binary not found at {path}: run `cargo build -p hutch-cli` or set HUTCH_BIN",
            returncode=2,
        )
    return path


def _wait_healthy(server: HutchServer) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            last_error = f"server exited with {server.process.returncode}"
            break
        try:
            with urllib.request.urlopen(f"{server.api_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"status {response.status}"
        except (urllib.error.URLError, OSError) as e:
            last_error = str(e)
        time.sleep(0.2)
    _stop(server)
    pytest.exit(
        f"hutch serve did not become healthy within {HEALTH_TIMEOUT_S:.0f}s ({last_error}); "
        f"server log:\n{server.log_tail()}",
        returncode=3,
    )


def _stop(server: HutchServer) -> str | None:
    """SIGTERM, wait, SIGKILL as a last resort. Returns a problem, if any."""
    if server.process.poll() is not None:
        return None
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        return f"server ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s and was killed"
    return None


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        if text in cmdline:
            found.append(f"pid {proc.name}: {cmdline.strip()[:300]}")
    return found


def _mounts_under(home: Path) -> list[str]:
    prefix = str(home) + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            if mount_point == str(home) or mount_point.startswith(prefix):
                mounts.append(mount_point)
    return mounts


def _leaks(home: Path) -> list[str]:
    """What the stopped server left behind; waits a little for stragglers to exit."""
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        processes = _processes_mentioning(str(home))
        mounts = _mounts_under(home)
        sandboxes_dir = home / "sandboxes"
        leftovers = sorted(os.listdir(sandboxes_dir)) if sandboxes_dir.is_dir() else []
        if not (processes or mounts or leftovers) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    problems = [f"process still refers to {home}: {p}" for p in processes]
    problems += [f"mount left under {home}: {m}" for m in mounts]
    problems += [f"{sandboxes_dir} is not empty: {leftovers}"] if leftovers else []
    return problems


def _delete_all_sandboxes(server: HutchServer) -> list[str]:
    problems = []
    try:
        live = server.live_sandboxes()
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        return [f"could not list sandboxes at teardown: {e}"]
    for sandbox in live:
        sandbox_id = sandbox.get("sandbox_id") or sandbox.get("id")
        request = urllib.request.Request(server.sandboxes_url(f"/{sandbox_id}"), method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=60).close()
        except (urllib.error.URLError, OSError) as e:
            problems.append(f"could not delete sandbox {sandbox_id} at teardown: {e}")
    return problems


@pytest.fixture(scope="session")
def hutch_server() -> HutchServer:
    binary = _hutch_bin()
    # Unix socket paths live under HUTCH_HOME and must stay under ~100 bytes.
    home = Path(tempfile.mkdtemp(prefix="hp", dir="/tmp"))
    log_path = Path(f"{home}.log")
    api_port, proxy_port = _free_port(), _free_port()
    env = dict(os.environ, HUTCH_HOME=str(home))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--listen",
                f"127.0.0.1:{api_port}",
                "--proxy-listen",
                f"127.0.0.1:{proxy_port}",
                # Sandboxes' DNS goes to loopback, which drops it: no test sends a query
                # to a resolver outside this machine.
                "--sandbox-dns",
                "127.0.0.1",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = HutchServer(
        home=home,
        api_url=f"http://127.0.0.1:{api_port}",
        process=process,
        log_path=log_path,
    )
    _wait_healthy(server)
    global _running_server
    _running_server = server

    yield server

    _running_server = None

    problems = _delete_all_sandboxes(server)
    stop_problem = _stop(server)
    if stop_problem:
        problems.append(stop_problem)
    elif server.process.returncode != 0:
        problems.append(f"server exited with {server.process.returncode} after SIGTERM")
    problems += _leaks(home)
    if problems:
        pytest.fail(
            "hutch serve teardown found problems (state kept at "
            f"{home} for inspection):\n  "
            + "\n  ".join(problems)
            + f"\nserver log ({log_path}):\n{server.log_tail()}",
            pytrace=False,
        )
    shutil.rmtree(home)
    log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def hutch_bin() -> Path:
    """The `hutch` binary the server runs, for tests that use its CLI too."""
    return _hutch_bin()


@pytest.fixture(scope="session")
def api_url(hutch_server: HutchServer) -> str:
    return hutch_server.api_url


@pytest.fixture(scope="session")
def client(api_url: str) -> SandboxClient:
    with SandboxClient.for_localhost(api_url=api_url, request_timeout=REQUEST_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def sandbox(client: SandboxClient) -> Sandbox:
    """A fresh sandbox from the default image, terminated after the test."""
    sb = client.create_and_connect()
    yield sb
    try:
        sb.terminate()
    except SandboxNotFoundError:
        pass


@pytest.fixture
def unique_name() -> str:
    return f"conf-{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log's tail to failing tests: most failures are explained there."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running_server is not None:
        report.sections.append(("hutch serve log (tail)", _running_server.log_tail(40)))
