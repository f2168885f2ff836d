"""SDK-side latencies for hutch-bench-pools (bench/src/bin/pools.rs), printed as one JSON
object on stdout.

usage: sdk_latency.py API_URL POOL_ID N

- claim_first_output_ms: `create_and_connect(pool_id=...)` (the SDK's claim, then connect)
  and `run("echo")` until its output is back, through the published Python SDK. Between
  claims, untimed, the claimed sandbox is deleted and the script waits until the pool is
  full again and nothing boots: each claim meets a quiet machine and a warm sandbox.
- run_echo_ms: `sandbox.run("echo", ["hi"])` on one running sandbox; beside it, through the
  same proxy with one kept-alive connection:
  - health_ms: `GET /api/v1/health` (proxy and agent round trip, no process),
  - raw_run_ms: `POST /api/v1/processes/run` of `echo hi` read to its end (the SDK's
    request, without the SDK).
- claims_per_sec: claims back to back for 20 s (each claimed sandbox deleted in the
  background), with the fraction that came warm.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

from tensorlake.sandbox import SandboxClient

api_url, pool_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = SandboxClient.for_localhost(api_url=api_url)


def raw(path, method="GET"):
    request = urllib.request.Request(f"{api_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.load(r)


def wait_warm(timeout=60, full=False):
    deadline = time.monotonic() + timeout
    while True:
        pool = raw(f"/sandbox-pools/{pool_id}")
        status = pool["status"]
        want = pool.get("warm_containers", 1) if full else 1
        if status["warm"] >= want and (not full or status["booting"] == 0):
            return
        if time.monotonic() > deadline:
            raise SystemExit("the pool never refilled")
        time.sleep(0.01)


def ms(seconds):
    return round(seconds * 1000, 3)


deleters = []


def delete_later(sandbox_id):
    deleter = threading.Thread(target=client.delete, args=(sandbox_id,))
    deleter.start()
    deleters.append(deleter)


# Claim -> first output of echo.
claim = []
for _ in range(n):
    wait_warm(full=True)
    time.sleep(0.2)
    t = time.perf_counter()
    sandbox = client.create_and_connect(pool_id=pool_id)
    out = sandbox.run("echo", ["hi"])
    claim.append(ms(time.perf_counter() - t))
    assert out.stdout.strip() == "hi", out
    client.delete(sandbox.sandbox_id)

# run("echo") on one running sandbox, and its pieces.
wait_warm(full=True)
sandbox = client.create_and_connect(pool_id=pool_id)
for _ in range(20):
    sandbox.run("echo", ["hi"])
run_echo = []
for _ in range(n):
    t = time.perf_counter()
    sandbox.run("echo", ["hi"])
    run_echo.append(ms(time.perf_counter() - t))

proxy = urllib.parse.urlparse(client.get(sandbox.sandbox_id).sandbox_url)
conn = http.client.HTTPConnection(proxy.hostname, proxy.port)
headers = {"X-Tensorlake-Sandbox-Id": sandbox.sandbox_id}


def timed(method, path, body=None):
    extra = {"content-type": "application/json"} if body else {}
    t = time.perf_counter()
    conn.request(method, path, body=body, headers={**headers, **extra})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    return ms(time.perf_counter() - t)


health = [timed("GET", "/api/v1/health") for _ in range(n)]
run_body = json.dumps({"command": "echo", "args": ["hi"]})
raw_run = [timed("POST", "/api/v1/processes/run", run_body) for _ in range(n)]
delete_later(sandbox.sandbox_id)

# Sustained claims.
time.sleep(2)
claims, warm, started = 0, 0, time.perf_counter()
while time.perf_counter() - started < 20:
    request = urllib.request.Request(f"{api_url}/sandbox-pools/{pool_id}/sandboxes", method="POST")
    with urllib.request.urlopen(request, timeout=120) as r:
        answer = json.load(r)
    claims += 1
    warm += 1 if answer.get("warm") else 0
    delete_later(answer["sandbox_id"])
elapsed = time.perf_counter() - started
for deleter in deleters:
    deleter.join()

print(
    json.dumps(
        {
            "claim_first_output_ms": claim,
            "run_echo_ms": run_echo,
            "health_ms": health,
            "raw_run_ms": raw_run,
            "claims_per_sec": claims / elapsed,
            "claims": claims,
            "claims_warm": warm,
        }
    ),
    flush=True,
)
# The SDK's native client can abort during interpreter teardown: leave without one.
os._exit(0)
