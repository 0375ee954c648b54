"""Type stubs for the native chunker (native/_chunker.pyx)."""
import numpy as np
import numpy.typing as npt
from collections.abc import Buffer

class Params:
    def __init__(self, min_size: int, normal_size: int, max_size: int, strict: int, loose: int) -> None: ...
    @property
    def max_size(self) -> int: ...
    @property
    def min_size(self) -> int: ...

def find_ends(params: Params, buf: Buffer, eof: bool, scanned: int = 0,
              reference: bool = False) -> tuple[npt.NDArray[np.uint64], int]: ...
