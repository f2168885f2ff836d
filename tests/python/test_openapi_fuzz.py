"""Schemathesis against a real `hutch serve`'s `/openapi.json`: no request may get a 5xx.

Every operation the document describes is fuzzed (coverage, fuzzing and stateful phases,
valid and invalid inputs) in one `st run` of at least MIN_REQUESTS requests, counted from its
HAR report. The only 5xx allowed is the documented `501 unsupported_capability`
(see schemathesis_hooks.py).

The server is this test's own, not the session's: fuzzed creates land in arbitrary namespaces,
and its flags keep the run bounded and on loopback:
- `--max-sandboxes 2 --max-queued 0`: at most two real gVisor sandboxes at once, and a create
  beyond that is answered 429 at once instead of waiting;
- `--pull never`: a create naming an image never reaches a registry;
- `--allow-registry 127.0.0.1:9`: `POST /hutch/v1/images/pull` may only name a closed loopback
  port, so no fuzzed reference makes the server resolve or dial anything else.
At the end every sandbox the database holds is deleted through the API, the server stopped,
and nothing may be left (processes, mounts, sandbox directories).

The seed is random unless HUTCH_FUZZ_SEED is set; a failure prints it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import HutchServer, _free_port, _hutch_bin, _leaks, _stop, _wait_healthy

HERE = Path(__file__).resolve().parent
# Requests the run must make; examples per operation chosen to clear it with room
# (about 3,000 requests over the 35 operations).
MIN_REQUESTS = 2000
MAX_EXAMPLES = 50
# The run takes well under a minute on 2 cores; this bounds a wedged one.
RUN_TIMEOUT_S = 300
# Longer than any create takes; a stuck request fails the run rather than hanging it.
REQUEST_TIMEOUT_S = 60


def _start_server(home: Path) -> HutchServer:
    log_path = Path(f"{home}.log")
    api_port, proxy_port = _free_port(), _free_port()
    env = dict(os.environ, HUTCH_HOME=str(home))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(_hutch_bin()),
                "serve",
                "--listen",
                f"127.0.0.1:{api_port}",
                "--proxy-listen",
                f"127.0.0.1:{proxy_port}",
                "--max-sandboxes",
                "2",
                "--max-queued",
                "0",
                "--pull",
                "never",
                "--allow-registry",
                "127.0.0.1:9",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = HutchServer(
        home=home, api_url=f"http://127.0.0.1:{api_port}", process=process, log_path=log_path
    )
    _wait_healthy(server)
    return server


def _st_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # A proxy would send the fuzzer's requests somewhere other than the loopback server.
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["SCHEMATHESIS_HOOKS"] = "schemathesis_hooks"
    return env


def _live_rows(home: Path) -> list[tuple[str, str]]:
    """(namespace, id) of every sandbox the database holds that has not ended.

    Read from the database because the API lists one namespace at a time and the fuzzer
    creates in namespaces of its choosing; the deletes still go through the API.
    """
    db = sqlite3.connect(f"file:{home}/hutch.db?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT namespace, id FROM sandboxes WHERE status != 'terminated'"
        ).fetchall()
    finally:
        db.close()
    return [(ns, sandbox_id) for ns, sandbox_id in rows]


def _pools(home: Path) -> list[tuple[str, str]]:
    """(namespace, id) of every warm pool the database holds."""
    db = sqlite3.connect(f"file:{home}/hutch.db?mode=ro", uri=True, timeout=10)
    try:
        return [(ns, i) for ns, i in db.execute("SELECT namespace, id FROM pools").fetchall()]
    finally:
        db.close()


def _delete(url: str) -> str | None:
    """DELETE `url`; the problem, if any."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=60).close()
    except (urllib.error.URLError, OSError) as e:
        return f"could not delete {url}: {e}"
    return None


def _delete_everything(server: HutchServer) -> list[str]:
    # Claimed sandboxes first (a pool with claimed sandboxes running is not deleted), then
    # the pools, which takes their warm sandboxes with them, then whatever is left.
    for ns, sandbox_id in _live_rows(server.home):
        _delete(f"{server.api_url}/v1/namespaces/{ns}/sandboxes/{sandbox_id}")
    problems = [
        problem
        for ns, pool_id in _pools(server.home)
        if (problem := _delete(f"{server.api_url}/v1/namespaces/{ns}/sandbox-pools/{pool_id}"))
    ]
    problems += [
        problem
        for ns, sandbox_id in _live_rows(server.home)
        if (problem := _delete(f"{server.api_url}/v1/namespaces/{ns}/sandboxes/{sandbox_id}"))
    ]
    # Deletes are synchronous, but give a straggler a moment before calling it a leak.
    deadline = time.monotonic() + 15
    while (left := _live_rows(server.home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    problems += [f"sandbox {ns}/{i} still live after its delete" for ns, i in left]
    return problems


def _server_errors(entries: list[dict]) -> list[str]:
    """5xx answers other than the documented 501 unsupported_capability."""
    found = []
    for entry in entries:
        status = entry["response"]["status"]
        text = entry["response"].get("content", {}).get("text") or ""
        if status < 500 or (status == 501 and '"unsupported_capability"' in text):
            continue
        request = entry["request"]
        body = (request.get("postData") or {}).get("text", "")
        found.append(f"{status} {request['method']} {request['url']} body={body[:300]!r}: {text[:300]}")
    return found


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_openapi_fuzz_finds_no_server_error() -> None:
    seed = int(os.environ.get("HUTCH_FUZZ_SEED") or random.randrange(2**31))
    home = Path(tempfile.mkdtemp(prefix="hf", dir="/tmp"))
    report_dir = Path(tempfile.mkdtemp(prefix="hf-report", dir="/tmp"))
    har = report_dir / "run.har"
    server = _start_server(home)
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "run",
        f"{server.api_url}/openapi.json",
        "--checks",
        "no_server_error",
        "--max-examples",
        str(MAX_EXAMPLES),
        # One worker: Hypothesis' caches are not thread-safe, and a second worker makes
        # schemathesis itself fail now and then (FlakyFailure in example generation).
        "--workers",
        "1",
        "--seed",
        str(seed),
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--no-color",
    ]
    started = time.monotonic()
    try:
        run = subprocess.run(
            command,
            env=_st_env(),
            cwd=report_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    finally:
        elapsed = time.monotonic() - started
        cleanup = _delete_everything(server)
        stop_problem = _stop(server)
        leaks = _leaks(home)

    context = f"seed {seed} (rerun with HUTCH_FUZZ_SEED={seed}); state kept at {home}"
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    errors = _server_errors(entries)
    assert not errors, f"{len(errors)} server errors, {context}:\n  " + "\n  ".join(errors[:20])
    assert run.returncode == 0, (
        f"st run failed ({run.returncode}), {context}:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    assert len(entries) >= MIN_REQUESTS, (
        f"only {len(entries)} requests made (want {MIN_REQUESTS}), {context}:\n{run.stdout[-3000:]}"
    )
    problems = cleanup + ([stop_problem] if stop_problem else []) + leaks
    assert not problems, f"cleanup found problems, {context}:\n  " + "\n  ".join(problems)
    print(f"schemathesis: {len(entries)} requests in {elapsed:.0f}s, seed {seed}, no 5xx")
    # Only a clean run's state goes; a failing one stays for inspection.
    shutil.rmtree(home)
    shutil.rmtree(report_dir)
    server.log_path.unlink(missing_ok=True)
