"""Single-use, expiring tokens that stand for a cached CRI request (the URL the CRI call returns carries one)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Any

from pycri.errors import ResourceExhausted

MAX_IN_FLIGHT = 1000  # like kubelet's request cache: bounded, oldest expired ones go first


class TooManyRequests(ResourceExhausted):
    """The cache is full of unexpired, unused tokens (RESOURCE_EXHAUSTED to the CRI caller)."""


class TokenCache:
    def __init__(self, ttl: float, clock=time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, Any]] = OrderedDict()

    def _evict_expired(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[token]

    def insert(self, kind: str, request: Any) -> str:
        self._evict_expired()
        if len(self._entries) >= MAX_IN_FLIGHT:
            raise TooManyRequests(f"{MAX_IN_FLIGHT} streaming requests waiting for their client")
        token = secrets.token_urlsafe(24)
        self._entries[token] = (self._clock() + self.ttl, kind, request)
        return token

    def consume(self, kind: str, token: str) -> Any | None:
        """The request for `token` if it exists, is unexpired and is of `kind`; it is removed either way."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        deadline, entry_kind, request = entry
        if deadline <= self._clock() or entry_kind != kind:
            return None
        return request

    def __len__(self) -> int:
        return len(self._entries)
