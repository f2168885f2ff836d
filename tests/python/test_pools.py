"""Warm pools through the Python SDK, and the Debian default image."""

import json
import time
import urllib.request

import pytest
from tensorlake.sandbox import PoolInUseError, PoolNotFoundError, RemoteAPIError, Sandbox


def _raw(api_url: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(f"{api_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def _settled(api_url: str, pool_id: str, warm: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        pool = _raw(api_url, f"/sandbox-pools/{pool_id}")
        status = pool["status"]
        if status["warm"] == warm and status["booting"] == 0 and status["evicting"] == 0:
            return pool
        assert time.monotonic() < deadline, f"pool never settled: {pool}"
        time.sleep(0.1)


@pytest.fixture
def pool(client):
    """A pool of busybox sandboxes (quick to boot): 2 warm, at most 3; deleted afterwards."""
    created = client.create_pool(
        image="hutch/minimal", cpus=0.5, memory_mb=256, warm_containers=2, max_containers=3
    )
    yield created.pool_id
    for sandbox in client.list():
        if getattr(sandbox, "pool_id", None) == created.pool_id:
            client.delete(sandbox.sandbox_id)
    try:
        client.delete_pool(created.pool_id)
    except PoolNotFoundError:
        pass


def test_claims_are_warm_and_the_pool_refills(client, api_url, pool):
    before = _settled(api_url, pool, 2)
    warm = {c["id"] for c in before["containers"] if c["state"] == "warm"}

    claimed = client.claim(pool)
    assert claimed.sandbox_id in warm
    info = client.get(claimed.sandbox_id)
    assert info.pool_id == pool
    # The claim answer says it came warm (a Hutch extension).
    raw = json.load(
        urllib.request.urlopen(
            urllib.request.Request(f"{api_url}/sandbox-pools/{pool}/sandboxes", method="POST"),
            timeout=60,
        )
    )
    assert raw["warm"] is True and raw["status"] == "running"

    after = _settled(api_url, pool, 1)  # 2 claimed, 1 warm: max_containers is 3
    assert after["status"]["claimed"] == 2
    listed = client.get_pool(pool)
    assert listed.max_containers == 3 and listed.warm_containers == 2
    assert pool in {p.pool_id for p in client.list_pools()}

    # Sandbox.create(pool_id=...) claims and connects: a command runs at once.
    sandbox = Sandbox.create(pool_id=pool, api_url=api_url)
    assert sandbox.run("echo", ["from the pool"]).stdout.strip() == "from the pool"

    # Three claimed = max_containers: one more is refused, typed.
    with pytest.raises(RemoteAPIError) as refused:
        client.claim(pool)
    assert refused.value.status_code == 429
    # Deleting the pool waits for its claimed sandboxes.
    with pytest.raises(PoolInUseError):
        client.delete_pool(pool)


def test_update_evicts_and_refills_and_delete_drains(client, api_url, pool):
    old = {c["id"] for c in _settled(api_url, pool, 2)["containers"]}

    updated = client.update_pool(
        pool, image="hutch/minimal", cpus=0.5, memory_mb=300, warm_containers=1, max_containers=2
    )
    assert updated.resources.memory_mb == 300
    fresh = _settled(api_url, pool, 1)
    assert not old & {c["id"] for c in fresh["containers"]}

    client.delete_pool(pool)
    with pytest.raises(PoolNotFoundError):
        client.get_pool(pool)
    deadline = time.monotonic() + 30
    while True:
        live = _raw(api_url, "/sandboxes")["sandboxes"]
        rows = [s for s in live if s.get("pool_id") == pool and s["status"] != "terminated"]
        if not rows:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_the_default_image_has_python_pip_bash_and_git(sandbox):
    result = sandbox.run(
        "bash",
        [
            "-c",
            "python3 -c 'print(6*7)' && pip --version && git --version && "
            "python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import sys; print(sys.prefix)'",
        ],
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "42"
    assert lines[1].startswith("pip ")
    assert lines[2].startswith("git version")
    assert lines[3] == "/tmp/v"


def test_the_sdk_managed_image_name_is_the_default_image(client):
    sandbox = client.create_and_connect(image="tensorlake/ubuntu-minimal")
    try:
        assert sandbox.run("python3", ["-c", "print('managed')"]).stdout.strip() == "managed"
    finally:
        sandbox.terminate()
