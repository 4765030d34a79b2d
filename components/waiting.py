"""Waiting for a local server (a Bento, a Prefect or MLflow server) to answer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping

import httpx


def wait_for_http(
    url: str,
    timeout_s: float,
    *,
    headers: Mapping[str, str] | None = None,
    process: subprocess.Popen[bytes] | None = None,
    interval_s: float = 0.5,
) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        RuntimeError: ``process`` (the server being waited for) exited first.
        TimeoutError: no 200 within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, headers=dict(headers or {}), timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(interval_s)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
