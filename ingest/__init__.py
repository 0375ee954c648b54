"""ingest: a content-defined dedup ingestion engine for model and dataset hubs.

Async API: `await Repository.open(url)`; blocking API: `ingest.open(url)`.
"""
from .chunking import ChunkParams, StreamChunker, chunk_ends
from .config import StoreConfig
from .errors import FormatError, IngestError, IntegrityError, InvalidName, NotFound, StoreError
from .memory import tune_malloc
from .pipeline import IngestResult
from .repository import Repository, VerifyReport
from .sync import SyncRepository, open

__version__ = "0.1.0"
__all__ = [
    "ChunkParams", "FormatError", "IngestError", "IngestResult", "IntegrityError",
    "InvalidName", "NotFound", "Repository", "StoreConfig", "StoreError", "StreamChunker",
    "SyncRepository", "VerifyReport", "chunk_ends", "open", "tune_malloc",
]
