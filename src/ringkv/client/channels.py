"""One lazily opened channel per address a client talks to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

ChannelT = TypeVar("ChannelT")


class ChannelPool(Generic[ChannelT]):
    """Long-lived channels by address."""

    def __init__(self, open_channel: Callable[[str], ChannelT]) -> None:
        self._open_channel = open_channel
        self._channels: dict[str, ChannelT] = {}

    def get(self, address: str) -> ChannelT:
        """The channel to ``address``, opened on first use."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open_channel(address)
        return channel

    def take_all(self) -> list[ChannelT]:
        """Every open channel, forgotten by the pool (for closing)."""
        channels = list(self._channels.values())
        self._channels.clear()
        return channels


def endpoint_list(endpoints: str | Sequence[str]) -> list[str]:
    """Endpoints from a comma-separated string or a sequence."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    cleaned = [item.strip() for item in items if item.strip()]
    if not cleaned:
        raise ValueError("at least one endpoint is needed")
    return cleaned
