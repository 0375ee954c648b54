"""The store's `config` object: the parameters fixed for the store's life.

Chunking parameters are recorded when a store is created and read back by
every writer, so a store never changes chunking under its own data (a change
would silently stop dedup against everything already stored).  Envelope magic
b"IGCF", version 1, payload JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .chunking import ChunkParams, json_int
from .envelope import seal, unseal
from .errors import FormatError

MAGIC, VERSION = b"IGCF", 1
KEY = "config"
# The cut rule of native/gearcdc.c with the GEAR table of gen_gear_table.py.
# Any change that moves a cut point gets a new name.  v2: the same rule, and
# incompressible files cut with `coarse_chunking` (chunking.params_for);
# stores made before it (v1) keep one set of parameters.
CHUNKER = "gear-nc-v2"
CHUNKERS = ("gear-nc-v1", CHUNKER)
AUTO = "auto"       # coarse_chunking: chunking.coarsened(), if frame_size holds its chunks


ZSTD_LEVELS = range(-7, 23)


def check_zstd_level(level: int) -> int:
    """A zstd level this engine writes at (ValueError otherwise)."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in ZSTD_LEVELS:
        raise ValueError(f"zstd_level must be an integer in -7..22, not {level!r}")
    return level


def parse_zstd_level(text: str) -> int:
    """A level given as text (a flag, an environment variable)."""
    try:
        level = int(text.strip())
    except ValueError:
        raise ValueError(f"not a zstd level: {text!r}") from None
    return check_zstd_level(level)


@dataclass(frozen=True)
class StoreConfig:
    chunking: ChunkParams = field(default_factory=ChunkParams)
    frame_size: int = 1 << 20       # raw bytes of consecutive new chunks compressed together
    pack_size: int = 64 << 20       # target pack size
    zstd_level: int = 3
    # Parameters for incompressible files (chunking.params_for); None: none.
    coarse_chunking: ChunkParams | None | str = AUTO

    def __post_init__(self) -> None:
        coarse = self.coarse_chunking
        if coarse == AUTO:
            coarse = self.chunking.coarsened()
            if coarse.max_size > self.frame_size:
                coarse = None
            object.__setattr__(self, "coarse_chunking", coarse)
        elif coarse is not None and not isinstance(coarse, ChunkParams):
            raise ValueError("coarse_chunking must be ChunkParams, None or 'auto'")
        if not (self.chunking.max_size <= self.frame_size <= 16 << 20):
            raise ValueError("frame_size must be between the max chunk size and 16 MiB")
        if coarse is not None and coarse.max_size > self.frame_size:
            raise ValueError("frame_size must hold the coarse max chunk size")
        if not (self.frame_size <= self.pack_size <= 1 << 30):
            raise ValueError("pack_size must be between frame_size and 1 GiB")
        check_zstd_level(self.zstd_level)

    def encode(self) -> bytes:
        d = {"chunker": CHUNKER, "chunking": self.chunking.to_dict(), "frame_size": self.frame_size,
             "pack_size": self.pack_size, "zstd_level": self.zstd_level}
        if self.coarse_chunking is None:
            d["chunker"] = CHUNKERS[0]       # what v1 meant: one set of parameters
        else:
            d["coarse_chunking"] = self.coarse_chunking.to_dict()
        return seal(MAGIC, VERSION, json.dumps(d, sort_keys=True).encode())

    @classmethod
    def decode(cls, data) -> "StoreConfig":
        _, payload = unseal(data, MAGIC, {VERSION}, "store config")
        try:
            d = json.loads(bytes(payload))
            if d.get("chunker") not in CHUNKERS:
                raise FormatError(f"store config: chunker {d.get('chunker')!r} is not supported "
                                  f"by this build ({', '.join(CHUNKERS)})")
            coarse = (ChunkParams.from_dict(d["coarse_chunking"]) if d["chunker"] == CHUNKER
                      else None)
            return cls(ChunkParams.from_dict(d["chunking"]), json_int(d, "frame_size"),
                       json_int(d, "pack_size"), json_int(d, "zstd_level"), coarse)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"store config: malformed ({e})") from None
