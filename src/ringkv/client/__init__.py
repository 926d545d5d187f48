"""The ringkv client SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from ringkv.client.aio import AsyncClient
from ringkv.client.channels import Security
from ringkv.client.requests import Entry, KeyEntry, ScanPage
from ringkv.client.retry import RetryPolicy
from ringkv.client.sync import Client
from ringkv.client.watching import WatchEvent

__all__ = [
    "AsyncClient",
    "Client",
    "Entry",
    "KeyEntry",
    "RetryPolicy",
    "ScanPage",
    "Security",
    "WatchEvent",
]
