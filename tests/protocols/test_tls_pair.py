"""The generated self-signed TLS pair when several processes start at once."""

from __future__ import annotations

import multiprocessing
import ssl
from pathlib import Path
from typing import Any

from provider.tls import certificate_paths


def _load(instance: str, start: Any, results: Any) -> None:
    results.put(_loaded(instance, start))


def _loaded(instance: str, start: Any) -> str:
    start.wait()
    settings = {"TLS_CERT": "", "TLS_KEY": "", "INSTANCE_DIR": instance, "HOSTNAME": "mx.test"}
    cert, key = certificate_paths(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        return f"mismatch: {error}"
    return cert.read_text()


def test_processes_starting_together_all_get_one_matching_pair(tmp_path: Path):
    context = multiprocessing.get_context("fork")
    start = context.Event()
    queue = context.Queue()
    processes = [
        context.Process(target=_load, args=(str(tmp_path), start, queue)) for _ in range(6)
    ]
    for process in processes:
        process.start()
    start.set()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert not [r for r in results if r.startswith("mismatch")], results
    assert len(set(results)) == 1  # one pair, made once
