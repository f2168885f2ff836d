"""Templates seen from the Python SDK: a template registered on the server (here with the
`hutch template` CLI on the server's state directory) starts sandboxes by its name, with the
files its Dockerfile built and its ENV and WORKDIR."""

import os
import subprocess
import tempfile
from pathlib import Path


def _hutch(binary: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), *args],
        env=dict(os.environ, HUTCH_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_template_starts_sandboxes_by_name(hutch_server, hutch_bin, client, unique_name):
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(
            "FROM hutch/minimal\n"
            "ENV GREETING=from-template\n"
            "WORKDIR /srv\n"
            "RUN echo built > /srv/built.txt\n"
        )
        built = _hutch(hutch_bin, hutch_server.home, "template", "build", "--name", unique_name, context)
        assert built.returncode == 0, built.stderr
    try:
        sb = client.create_and_connect(image=unique_name)
        try:
            result = sb.run("sh", ["-c", "cat built.txt; echo $GREETING; pwd"])
            assert result.exit_code == 0, result.stderr
            assert result.stdout.splitlines() == ["built", "from-template", "/srv"]
            assert client.get(sb.sandbox_id).image == unique_name
        finally:
            client.delete(sb.sandbox_id)
    finally:
        removed = _hutch(hutch_bin, hutch_server.home, "template", "rm", unique_name)
        assert removed.returncode == 0, removed.stderr


def test_the_python_sdk_builds_lists_and_deletes_a_legacy_image(
    hutch_server, client, unique_name, monkeypatch, tmp_path
):
    from tensorlake.image.sandbox_builder import (
        build_sandbox_image,
        delete_sandbox_image,
        find_sandbox_image_by_name,
        list_sandbox_images,
    )

    # The image SDK reads its endpoint and key from the environment at each call; a
    # loopback server accepts any key.
    monkeypatch.setenv("TENSORLAKE_API_URL", hutch_server.api_url)
    monkeypatch.setenv("TENSORLAKE_API_KEY", "local-test")
    (tmp_path / "Dockerfile").write_text("FROM hutch/minimal\nRUN echo sdk-built > /sdk.txt\n")
    events = []
    registered = build_sandbox_image(
        str(tmp_path / "Dockerfile"),
        registered_name=unique_name,
        cas=False,
        memory_mb=512,
        cpus=1.0,
        emit=events.append,
    )
    assert registered["name"] == unique_name
    assert registered["rootfsNodeKind"] == "base"
    assert any("RUN echo sdk-built" in str(e) for e in events), events

    found = find_sandbox_image_by_name(unique_name)
    assert found and found["id"] == registered["id"]
    assert unique_name in {i.get("name") for i in list_sandbox_images()}

    sb = client.create_and_connect(image=unique_name)
    try:
        assert sb.run("cat", ["/sdk.txt"]).stdout.strip() == "sdk-built"
    finally:
        client.delete(sb.sandbox_id)

    delete_sandbox_image(unique_name)
    assert find_sandbox_image_by_name(unique_name) is None
