"""Hugging Face Hub access that fails fast when the network is down.

huggingface_hub retries an unreachable endpoint with back-off (about a minute of duplicated warnings per file)
before it gives up. vpt checks once per process whether the endpoint answers (a TCP connect, a few seconds at
most); when it does not, hub calls run in huggingface_hub's offline mode, so cached files still load and a
missing one fails at once, and the error names ``HF_HUB_OFFLINE=1`` (which skips the check) and the local-file
options. Nothing is probed when ``HF_HUB_OFFLINE`` is set, or when a proxy is configured (vpt cannot tell
whether the proxy reaches the hub).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Iterator
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to use only cached files without trying the network"

_reachability: dict[str, bool] = {}  # endpoint -> answered, once per process


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def endpoint_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``endpoint``'s host and port opens within ``timeout`` seconds (name lookup
    included: it runs in a thread that is abandoned at the deadline)."""
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=connect, daemon=True, name="vpt-hub-probe")
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


def hub_reachable() -> bool:
    """Whether the hub endpoint answers (checked once per process; True when a proxy is set)."""
    endpoint = hub_endpoint()
    if endpoint not in _reachability:
        proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
        _reachability[endpoint] = proxied or endpoint_reachable(endpoint)
        if not _reachability[endpoint]:
            log.warning("the Hugging Face hub (%s) is unreachable: using cached files only; %s", endpoint,
                        OFFLINE_HINT)
    return _reachability[endpoint]


def why_offline() -> str:
    """Why hub files could not be fetched, in words, for error messages ("" when the hub looked reachable)."""
    if _reachability.get(hub_endpoint()) is False:
        return f"the hub endpoint {hub_endpoint()} is unreachable (no network?); {OFFLINE_HINT}"
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set, so only cached files are used"
    return f"this machine may be offline; {OFFLINE_HINT}"


def describe_failure(err: BaseException) -> str:
    """A hub download error in one line; a cache miss in offline mode says so (huggingface_hub's own text would
    tell to unset HF_HUB_OFFLINE, which vpt may have set itself for an unreachable endpoint)."""
    if type(err).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return f"{type(err).__name__}: not in the local cache"
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


@contextlib.contextmanager
def hub_access() -> Iterator[bool]:
    """Run hub downloads inside: offline mode (cache only, no retries) when the endpoint does not answer.
    Yields whether the network is used."""
    from huggingface_hub import constants

    if offline_mode():
        yield False
        return
    if hub_reachable():
        yield True
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub's download functions
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = previous
