"""A real Label Studio for the tests: installed once per machine into its own virtual environment (its pins
clash with alsel's, so it never enters alsel's), started headless on 127.0.0.1 with SQLite in a temporary
folder, stopped by its pid.

    ALSEL_LABELSTUDIO_VENV   where the venv lives (default ~/.cache/alsel-tests/label-studio-<version>)
    ALSEL_REQUIRE_LABELSTUDIO=1   a server that cannot be installed or started fails the tests (CI as root)
                                  instead of skipping them
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

VERSION = "1.23.2"
START_SECONDS = 240


def venv_dir() -> str:
    return os.environ.get("ALSEL_LABELSTUDIO_VENV") or os.path.join(
        os.path.expanduser("~"), ".cache", "alsel-tests", f"label-studio-{VERSION}")


def unavailable(why: str):
    if os.environ.get("ALSEL_REQUIRE_LABELSTUDIO") == "1":
        pytest.fail(f"Label Studio: {why}")
    pytest.skip(f"Label Studio: {why}")


def install() -> str:
    """The label-studio executable, installing it into its venv on first use (a few minutes, once); a venv
    whose install did not finish (no marker file) is made again."""
    venv = venv_dir()
    exe = os.path.join(venv, "bin", "label-studio")
    marker = os.path.join(venv, ".alsel-installed")
    if os.path.exists(marker) and os.path.exists(exe):
        return exe
    subprocess.run(["rm", "-rf", venv], check=False)
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", f"label-studio=={VERSION}"], check=True,
                       capture_output=True, timeout=1500)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        tail = (getattr(e, "stderr", b"") or b"").decode("utf-8", "replace").strip().splitlines()[-3:]
        unavailable(f"pip install label-studio=={VERSION} failed: {' '.join(tail)[:300]}")
    with open(marker, "w") as fh:
        fh.write(VERSION + "\n")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running Label Studio: its url, legacy token, document root and process."""

    def __init__(self, exe: str, data: str, document_root: str, token: str = "alsel-test-token-0123456789"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.document_root = document_root
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=document_root,
                   LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
                   LABEL_STUDIO_BASE_DATA_DIR=data, PYTHONUNBUFFERED="1")
        self.log_path = os.path.join(data, "server.log")
        os.makedirs(data, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port), "--data-dir", data,
             "--username", "alsel@example.com", "--password", "alsel-test-password", "--user-token", token,
             "--enable-legacy-api-token"], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=data,
            start_new_session=True)
        self.wait_healthy()
        self.start_seconds = time.monotonic() - self.started

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        with open(self.log_path, "rb") as fh:
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()[-5:]
        self.stop()
        unavailable(f"did not answer /health within {START_SECONDS} s: {' | '.join(tail)[:400]}")

    def stop(self) -> None:
        """Stop the server (its whole process group) by its pid."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
