"""Archived sandboxes, live resize, graceful stop and idle timeout through the Python SDK
(raw HTTP only for what the SDK has no call for: stop and the idle timeout, Hutch's own)."""

import json
import threading
import time
import urllib.request

import pytest
from tensorlake.sandbox import SandboxNotFoundError, SandboxStatus

BUSYBOX = "hutch/minimal"


def _post(url: str, body: dict | None = None, method: str = "POST") -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


def _listed(api_url: str, sandbox_id: str) -> dict:
    """As a listing shows it: a listing is not traffic for the idle timeout."""
    with urllib.request.urlopen(f"{api_url}/sandboxes?include_terminated=true", timeout=30) as r:
        page = json.load(r)
    return next(s for s in page["sandboxes"] if s["sandbox_id"] == sandbox_id)


def test_archived_sandboxes_list_newest_first_and_get(client):
    ended = []
    for _ in range(2):
        sandbox = client.create_and_connect(image=BUSYBOX)
        client.delete(sandbox.sandbox_id)
        ended.append(sandbox.sandbox_id)
    page = client.list_archived(limit=1)
    assert page.sandboxes[0].sandbox_id == ended[-1]
    assert page.sandboxes[0].archived_at.year >= 2024
    assert page.next_cursor
    older = client.list_archived(limit=1, cursor=page.next_cursor, direction="forward")
    assert older.sandboxes[0].sandbox_id == ended[-2]
    assert client.get_archived(ended[0]).sandbox_id == ended[0]
    live = client.create_and_connect(image=BUSYBOX)
    try:
        with pytest.raises(SandboxNotFoundError):
            client.get_archived(live.sandbox_id)
    finally:
        live.terminate()


def test_resize_up_and_down_without_a_restart(client):
    sandbox = client.create_and_connect(image=BUSYBOX, cpus=1.0, memory_mb=512)
    try:
        sleeper = sandbox.start_process("sleep", ["600"])
        info = client.update_sandbox(sandbox.sandbox_id, cpus=2, memory_mb=1024)
        assert (info.resources.cpus, info.resources.memory_mb) == (2.0, 1024)
        generation = info.resource_resize.generation
        again = client.wait_for_resource_resize(sandbox.sandbox_id, generation, timeout=10)
        assert again.resource_resize.status == "succeeded"
        info = client.update_sandbox(sandbox.sandbox_id, memory_mb=256)
        assert info.resources.memory_mb == 256
        assert info.resource_resize.generation == generation + 1
        # The same sandbox, the same process: no restart.
        assert sandbox.get_process(sleeper.pid).status.value == "running"
        assert client.get(sandbox.sandbox_id).status == SandboxStatus.RUNNING
    finally:
        sandbox.terminate()


def test_a_graceful_stop_reaches_sigterm_handlers(client, api_url):
    sandbox = client.create_and_connect(image=BUSYBOX)
    process = sandbox.start_process(
        "sh", ["-c", "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done"]
    )
    lines = []

    def follow():
        for event in sandbox.follow_output(process.pid):
            if getattr(event, "line", None):
                lines.append(event.line)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(1.0)
    stopped = _post(f"{api_url}/sandboxes/{sandbox.sandbox_id}/stop", {"grace_secs": 5})
    reader.join(timeout=15)
    assert "got-term" in lines, lines
    assert stopped["status"] == "terminated"
    assert stopped["termination_reason"] == "stopped"
    assert client.get(sandbox.sandbox_id).termination_reason == "stopped"


def test_an_idle_sandbox_ends(client, api_url):
    created = _post(f"{api_url}/sandboxes", {"image": BUSYBOX, "idle_timeout_secs": 2})
    sandbox_id = created["sandbox_id"]
    deadline = time.monotonic() + 15
    while _listed(api_url, sandbox_id)["status"] != "terminated":
        assert time.monotonic() < deadline, "the idle sandbox did not end"
        time.sleep(0.5)
    assert _listed(api_url, sandbox_id)["termination_reason"] == "idle_timeout"


def test_disk_mb_is_a_real_limit(client):
    sandbox = client.create_and_connect(image=BUSYBOX, disk_mb=256)
    try:
        assert client.get(sandbox.sandbox_id).resources.disk_mb == 256
        result = sandbox.run(
            "sh", ["-c", "dd if=/dev/zero of=/root/big bs=1M count=1024 2>&1; df -k / | tail -1"]
        )
        assert "No space left on device" in result.stdout
        total_kb = int(result.stdout.splitlines()[-1].split()[1])
        assert 200 << 10 < total_kb <= 256 << 10
        # Still alive, and it can free what it wrote.
        assert sandbox.run("sh", ["-c", "rm /root/big && echo ok"]).stdout.strip() == "ok"
    finally:
        sandbox.terminate()


def _wait_process(sandbox, name: str, done, what: str):
    deadline = time.monotonic() + 30
    while True:
        process = sandbox.get_process(name)
        if done(process):
            return process
        assert time.monotonic() < deadline, f"{what}: {process}"
        time.sleep(0.1)


def test_managed_processes_restart_and_act_on_health_checks(client):
    sandbox = client.create_and_connect(image=BUSYBOX)
    try:
        started = sandbox.start_process(
            "sleep",
            ["600"],
            name="worker",
            restart={"policy": "always", "initial_backoff_ms": 100, "max_backoff_ms": 1000},
        )
        assert started.managed.id == "worker"
        sandbox.send_signal(started.pid, 9)
        back = _wait_process(
            sandbox, "worker", lambda p: p.pid != started.pid, "not restarted after kill -9"
        )
        assert back.managed.restart_count == 1
        assert back.managed.last_exit.signal == 9
        again = sandbox.restart_process("worker")
        assert again.pid != back.pid and again.managed.restart_count == 2

        sandbox.start_process(
            "sleep",
            ["600"],
            name="deaf",
            restart={"policy": "on_failure", "max_restarts": 1, "initial_backoff_ms": 100},
            health_check={
                "type": "tcp",
                "port": 7777,
                "initial_delay_ms": 100,
                "interval_ms": 100,
                "timeout_ms": 100,
                "failure_threshold": 2,
            },
        )
        gave_up = _wait_process(
            sandbox,
            "deaf",
            lambda p: p.managed.status.value == "stopped",
            "the failing health check was not acted on",
        )
        assert gave_up.managed.restart_count == 1
        assert gave_up.managed.health_status.value == "unhealthy"
    finally:
        sandbox.terminate()
