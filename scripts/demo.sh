#!/usr/bin/env bash
# The main job: start `hutch serve` over HOME, create a sandbox of the default (Debian) image
# through the API, run python3 in it, remove it, stop the server. Idempotent; used by
# `make demo`.
# usage: scripts/demo.sh HUTCH_BINARY HOME
set -euo pipefail
HUTCH="$(realpath "$1")"
export HUTCH_HOME="$2"
export HUTCH_SERVER=http://127.0.0.1:18900
"$HUTCH" serve --listen 127.0.0.1:18900 --proxy-listen 127.0.0.1:19443 2>"$HUTCH_HOME/serve.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
	curl -sf "$HUTCH_SERVER/healthz" >/dev/null && break
	kill -0 "$SERVER" 2>/dev/null || { cat "$HUTCH_HOME/serve.log" >&2; exit 1; }
	sleep 0.05
done
ID="$("$HUTCH" sbx create --timeout 300)"
trap '"$HUTCH" sbx rm "$ID" >/dev/null 2>&1 || true; kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
echo "sandbox $ID is running"
"$HUTCH" sbx exec "$ID" -- python3 -c 'import platform; print("hello from python", platform.python_version(), "in a gVisor sandbox")'
