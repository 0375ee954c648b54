"""Helpers shared by the test modules: data that is the same on every run."""
import asyncio

import numpy as np


def run(coro):
    return asyncio.run(coro)


def rand(n: int, seed: int = 0) -> bytes:
    """n incompressible bytes."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def text(n: int, seed: int = 0) -> bytes:
    """n bytes of words and newlines (compressible, and chunked like text)."""
    rng = np.random.default_rng(seed)
    words = np.array([b"alpha", b"beta", b"gamma", b"delta", b"tensor", b"row", b"\n"])
    out = b" ".join(words[rng.integers(0, len(words), n // 4)].tolist())
    return out[:n]
