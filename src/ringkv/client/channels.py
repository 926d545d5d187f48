"""The endpoints a client talks to, one lazily opened channel each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

ChannelT = TypeVar("ChannelT")


class ChannelPool(Generic[ChannelT]):
    """Endpoints in order; calls use the current one until it fails."""

    def __init__(self, endpoints: str | Sequence[str], open_channel: Callable[[str], ChannelT]):
        items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        self.endpoints = [item.strip() for item in items if item.strip()]
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        self._open_channel = open_channel
        self._channels: dict[str, ChannelT] = {}
        self._current = 0

    def current(self) -> ChannelT:
        """The channel to the current endpoint, opened on first use."""
        endpoint = self.endpoints[self._current]
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = self._open_channel(endpoint)
        return channel

    def advance(self) -> None:
        """Move on to the next endpoint, after the current one failed."""
        self._current = (self._current + 1) % len(self.endpoints)

    def take_all(self) -> list[ChannelT]:
        """Every open channel, forgotten by the pool (for closing)."""
        channels = list(self._channels.values())
        self._channels.clear()
        return channels
