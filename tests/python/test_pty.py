"""Interactive PTY sessions: the SDK's session create plus its websocket `Pty` handle."""

import threading
import time


class _Screen:
    """Everything the PTY printed, for waiting on a substring."""

    def __init__(self):
        self._data = bytearray()
        self._changed = threading.Condition()

    def feed(self, chunk: bytes) -> None:
        with self._changed:
            self._data.extend(chunk)
            self._changed.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while needle not in self._data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} not in PTY output: {bytes(self._data)!r}")
                self._changed.wait(left)


def test_pty_runs_an_interactive_shell(sandbox):
    session = sandbox.create_pty_session("sh", rows=24, cols=80).value
    assert isinstance(session["session_id"], str) and session["session_id"]
    assert isinstance(session["token"], str) and session["token"]

    screen = _Screen()
    exits = []
    pty = sandbox.connect_pty(
        session["session_id"], session["token"], on_data=screen.feed, on_exit=exits.append
    )
    try:
        # The shell has to evaluate this: the echoed input itself does not contain "pty-42".
        pty.send_input("echo pty-$((6*7))\n")
        screen.wait_for(b"pty-42")

        pty.resize(cols=132, rows=40)
        pty.send_input("stty size\n")
        screen.wait_for(b"40 132")

        pty.send_input("exit 5\n")
        assert pty.wait(timeout=15) == 5
        # `wait` can return just before the reader thread runs the exit handlers.
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exits == [5]
    finally:
        pty.disconnect()
