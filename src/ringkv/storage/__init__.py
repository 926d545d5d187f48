"""Storage engines: where a node keeps its records."""

from ringkv.storage.engine import Engine, EngineStats, FsyncMode
from ringkv.storage.factory import ENGINE_KINDS, open_engine

__all__ = ["ENGINE_KINDS", "Engine", "EngineStats", "FsyncMode", "open_engine"]
