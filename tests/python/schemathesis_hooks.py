"""Schemathesis hooks for test_openapi_fuzz.py, loaded by `st run` through SCHEMATHESIS_HOOKS.

One check, `no_server_error`: every 5xx fails, except the one the API documents on purpose,
`501 unsupported_capability`, which answers features this server does not have yet
(suspend/resume/snapshot, templates from snapshots) the way the Tensorlake API does.
The built-in `not_a_server_error` would count that deliberate answer as a crash.
"""

from __future__ import annotations

import schemathesis


def _documents(case, status: int) -> bool:
    responses = case.operation.definition.raw.get("responses", {})
    return str(status) in responses


@schemathesis.check
def no_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    if response.status_code == 501 and _documents(case, 501):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("code") == "unsupported_capability":
            return None
    raise AssertionError(
        f"server error {response.status_code} from {case.method} {case.formatted_path}: "
        f"{response.text[:500]}"
    )
