"""Type stubs for native/_blake3.pyx (the vendored BLAKE3 C code)."""
import numpy as np
import numpy.typing as npt
from collections.abc import Buffer

def hash_chunks(buf: Buffer, ends: npt.ArrayLike, start: int = 0) -> npt.NDArray[np.uint8]: ...
def version() -> str: ...
