"""Headless Chromium for the tests: Debian's package, installed on first use when we may."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# the machine's closed network refuses Chromium's background connections: switch them off
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str):
    """Skip on a development machine; under CI=true a missing browser fails the run instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def chromium_executable() -> str:
    """Path of a Chromium binary; installs Debian's `chromium` when missing and running as root."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                unavailable(f"could not install Chromium ({' '.join(cmd)}): {done.stderr.strip()[-200:]}")
        path = shutil.which("chromium")
        if path:
            return path
    unavailable("no Chromium: install Debian's chromium package (apt-get install chromium)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS)
