"""The lifecycle API: delete, names, get_or_create, and typed errors."""

import pytest
from tensorlake.sandbox import (
    RemoteAPIError,
    Sandbox,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
)


def test_created_sandbox_is_running_and_listed(client, sandbox):
    info = client.get(sandbox.sandbox_id)

    assert info.sandbox_id == sandbox.sandbox_id
    assert info.status == SandboxStatus.RUNNING
    assert info.sandbox_url
    assert sandbox.sandbox_id in {s.sandbox_id for s in client.list()}


def test_deleted_sandbox_reports_terminated(client):
    sb = client.create_and_connect()
    sandbox_id = sb.sandbox_id
    assert sb.run("true").exit_code == 0

    client.delete(sandbox_id)

    info = client.get(sandbox_id)
    assert info.status == SandboxStatus.TERMINATED
    # A terminated sandbox is not routable any more.
    assert info.sandbox_url is None
    live = {s.sandbox_id for s in client.list() if s.status != SandboxStatus.TERMINATED}
    assert sandbox_id not in live
    # The old handle no longer reaches anything; the proxy answers with a final 4xx.
    with pytest.raises(RemoteAPIError) as raised:
        sb.run("true")
    assert 400 <= raised.value.status_code < 500


def test_terminate_through_the_handle(client):
    sb = client.create_and_connect()
    sandbox_id = sb.sandbox_id

    sb.terminate()

    assert client.get(sandbox_id).status == SandboxStatus.TERMINATED


def test_name_resolves_to_the_same_sandbox_and_is_unique(client, api_url, unique_name):
    sb = client.create_and_connect(name=unique_name)
    try:
        by_name = client.get(unique_name)
        assert by_name.sandbox_id == sb.sandbox_id
        assert by_name.name == unique_name

        with pytest.raises(RemoteAPIError) as raised:
            client.create_and_connect(name=unique_name)
        assert raised.value.status_code == 409

        attached = Sandbox.get_or_create(unique_name, api_url=api_url)
        assert attached.sandbox_id == sb.sandbox_id
        assert attached.bind_outcome == "attached"
        assert attached.run("echo", ["attached"]).stdout == "attached"
    finally:
        sb.terminate()


def test_get_or_create_creates_when_the_name_is_free(client, api_url, unique_name):
    sb = Sandbox.get_or_create(unique_name, api_url=api_url)
    try:
        assert sb.bind_outcome == "created"
        assert client.get(unique_name).sandbox_id == sb.sandbox_id
        assert sb.run("echo", ["created"]).stdout == "created"
    finally:
        sb.terminate()


def test_unknown_sandbox_is_not_found(client, api_url):
    with pytest.raises(SandboxNotFoundError):
        client.get("no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        client.delete("no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("no-such-sandbox", api_url=api_url)


def test_unknown_image_is_a_client_error(client, hutch_server):
    before = {s["sandbox_id"] for s in hutch_server.live_sandboxes()}

    with pytest.raises(SandboxError) as raised:
        client.create_and_connect(image="hutch-conformance/no-such-image:v1")

    error = raised.value
    assert isinstance(error, RemoteAPIError), f"untyped error: {error!r}"
    assert 400 <= error.status_code < 500, f"status {error.status_code}: {error}"
    # A failed create leaves nothing running behind.
    assert {s["sandbox_id"] for s in hutch_server.live_sandboxes()} == before
