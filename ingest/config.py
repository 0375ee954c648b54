"""The store's `config` object: the parameters fixed for the store's life.

Chunking parameters are recorded when a store is created and read back by
every writer, so a store never changes chunking under its own data (a change
would silently stop dedup against everything already stored).  Envelope magic
b"IGCF", version 1, payload JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .chunking import ChunkParams
from .envelope import seal, unseal
from .errors import FormatError

MAGIC, VERSION = b"IGCF", 1
KEY = "config"
# The cut rule of native/gearcdc.c with the GEAR table of gen_gear_table.py.
# Any change that moves a cut point gets a new name.
CHUNKER = "gear-nc-v1"


@dataclass(frozen=True)
class StoreConfig:
    chunking: ChunkParams = field(default_factory=ChunkParams)
    frame_size: int = 1 << 20       # raw bytes of consecutive new chunks compressed together
    pack_size: int = 64 << 20       # target pack size
    zstd_level: int = 3

    def __post_init__(self) -> None:
        if not (self.chunking.max_size <= self.frame_size <= 16 << 20):
            raise ValueError("frame_size must be between the max chunk size and 16 MiB")
        if not (self.frame_size <= self.pack_size <= 1 << 30):
            raise ValueError("pack_size must be between frame_size and 1 GiB")
        if not (-7 <= self.zstd_level <= 22):
            raise ValueError("zstd_level must be in -7..22")

    def encode(self) -> bytes:
        d = {"chunker": CHUNKER, "chunking": self.chunking.to_dict(), "frame_size": self.frame_size,
             "pack_size": self.pack_size, "zstd_level": self.zstd_level}
        return seal(MAGIC, VERSION, json.dumps(d, sort_keys=True).encode())

    @classmethod
    def decode(cls, data) -> "StoreConfig":
        _, payload = unseal(data, MAGIC, {VERSION}, "store config")
        try:
            d = json.loads(bytes(payload))
            if d.get("chunker") != CHUNKER:
                raise FormatError(f"store config: chunker {d.get('chunker')!r} is not supported "
                                  f"by this build ({CHUNKER!r})")
            return cls(ChunkParams.from_dict(d["chunking"]), int(d["frame_size"]),
                       int(d["pack_size"]), int(d["zstd_level"]))
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"store config: malformed ({e})") from None
