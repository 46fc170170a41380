"""`m3embed serve` start-up: the model an index records, and a taken port refused before anything loads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from m3embed.index import open_index

CLI = [sys.executable, "-c", "from m3embed.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_index_uses_the_model_the_index_records(m3_model, tmp_path):
    with open_index(tmp_path / "idx", m3_model, create=True) as index:
        assert index.manifest.model_name == m3_model.name
    port = _free_port()
    proc = subprocess.Popen([*CLI, "serve", "--index", str(tmp_path / "idx"), "--port", str(port),
                             "--log-level", "warning", "--device", "cpu"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None, proc.communicate(timeout=30)[0] if proc.poll() is not None else "no answer"
        assert health["fingerprint"] == m3_model.fingerprint and health["index"] is True
        assert health["model"] == m3_model.name
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_serve_on_a_taken_port_is_one_line_before_loading(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([*CLI, "serve", "--port", str(port), "--model", str(tmp_path / "not-loaded")],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    assert "serving" not in r.stdout + r.stderr


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--port", "99999", "--port must be between 1 and 65535, got 99999"),  # was a 40-line OverflowError
    ("--graceful-timeout", "-1", "--graceful-timeout must be >= 0, got -1"),  # these four started a server
    ("--max-items", "0", "max_items (--max-items) must be an integer >= 1, got 0"),
    ("--max-body-mb", "-1", "--max-body-mb must be > 0, got -1"),
    ("--max-chars", "0", "max_chars (--max-chars) must be an integer >= 1, got 0"),
    ("--max-queue", "0", "max_queue (--max-queue) must be an integer >= 1, got 0"),
])
def test_serve_flags_are_checked_before_loading(flag, value, message, tmp_path, capsys, monkeypatch):
    from tests.test_cli_errors import one_line_error, run_cli

    code, _, err = run_cli(capsys, monkeypatch, "serve", flag, value, "--model", tmp_path / "not-loaded")
    assert one_line_error(code, err) == f"error: {message}"
