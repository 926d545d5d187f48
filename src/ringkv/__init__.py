"""ringkv: a partitioned, replicated key-value store with a gRPC API.

The client SDK is importable from here::

    import ringkv

    with ringkv.Client("127.0.0.1:50051") as kv:
        kv.set("greeting", b"hello")
        print(kv.get("greeting").value)
"""

from ringkv.client import AsyncClient, Client, Entry, KeyEntry, RetryPolicy, WatchEvent
from ringkv.core import errors
from ringkv.core.consistency import Consistency

__all__ = [
    "AsyncClient",
    "Client",
    "Consistency",
    "Entry",
    "KeyEntry",
    "RetryPolicy",
    "WatchEvent",
    "errors",
]
