"""Processes through the proxy: one-shot `run`, background processes, stdin, output, signals."""

import signal
import time

from tensorlake.sandbox import CommandExitReason, ProcessStatus, StdinMode


def _wait_until_finished(sandbox, pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    info = sandbox.get_process(pid)
    while info.status == ProcessStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
        info = sandbox.get_process(pid)
    return info


def test_run_reports_exit_code_and_separates_stdout_from_stderr(sandbox):
    result = sandbox.run("sh", ["-c", "echo out; echo err >&2; exit 3"])

    assert result.exit_code == 3
    assert result.stdout == "out"
    assert result.stderr == "err"
    assert result.reason == CommandExitReason.EXITED


def test_run_passes_env_and_working_dir(sandbox):
    result = sandbox.run(
        "sh", ["-c", 'echo "$GREETING"; pwd'], env={"GREETING": "hi there"}, working_dir="/tmp"
    )

    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["hi there", "/tmp"]


def test_background_process_reads_stdin_until_closed(sandbox):
    started = sandbox.start_process(
        "sh",
        ["-c", "while read l; do echo got:$l; done; echo eof >&2"],
        stdin_mode=StdinMode.PIPE,
    )
    assert started.status == ProcessStatus.RUNNING
    assert started.stdin_writable

    sandbox.write_stdin(started.pid, b"alpha\n")
    sandbox.write_stdin(started.pid, b"beta\ngamma\n")
    sandbox.close_stdin(started.pid)
    # Returns once the process has exited and its output is drained.
    events = list(sandbox.follow_output(started.pid))

    stdout = [e.line for e in events if e.stream == "stdout"]
    stderr = [e.line for e in events if e.stream == "stderr"]
    assert stdout == ["got:alpha", "got:beta", "got:gamma"]
    assert stderr == ["eof"]
    finished = sandbox.get_process(started.pid)
    assert finished.status == ProcessStatus.EXITED
    assert finished.exit_code == 0
    assert not finished.stdin_writable
    assert finished.ended_at is not None


def test_follow_stdout_sees_only_stdout(sandbox):
    started = sandbox.start_process("sh", ["-c", "echo one; echo two >&2; echo three"])

    lines = [e.line for e in sandbox.follow_stdout(started.pid)]

    assert lines == ["one", "three"]


def test_sigterm_ends_a_background_process_by_that_signal(sandbox):
    started = sandbox.start_process("sleep", ["1000"])
    assert sandbox.get_process(started.pid).status == ProcessStatus.RUNNING

    response = sandbox.send_signal(started.pid, signal.SIGTERM.value)
    assert response.success

    info = _wait_until_finished(sandbox, started.pid)
    assert info.status == ProcessStatus.SIGNALED
    assert info.signal == signal.SIGTERM.value
    assert info.exit_code is None
