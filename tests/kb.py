"""Helpers for running the real `kbypass` command in tests."""

import os
import subprocess
import sys


def kbypass(*args: str, env: dict | None = None, timeout: float = 120, check: bool = False):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "kbypass", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kbypass {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
