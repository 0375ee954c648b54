# The native kernels (one module per concept); everything else is declared in pyproject.toml.
import os
import platform
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

# ingest._blake3: the official BLAKE3 C code, vendored unmodified in native/blake3/.
# On x86-64 Unix its SIMD kernels are upstream's assembly files: passed to the
# link step (the compiler driver assembles .S files there), as upstream's own
# setup.py does, since setuptools compiles no .S sources.  They hash 64 KiB
# chunks ~15% faster than the intrinsics versions, which are the fallback
# elsewhere on x86: those need their own target flags, which setuptools cannot
# give one source, so native/blake3_*_target.c include them under a target
# pragma.  Each wrapper compiles to nothing off its architecture.
_MACHINE = platform.machine().lower()
_X86 = _MACHINE in ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")
_ASM = _MACHINE in ("x86_64", "amd64") and sys.platform != "win32" and not os.environ.get("INGEST_BLAKE3_NO_ASM")
_SIMD = ("sse2", "sse41", "avx2", "avx512")
BLAKE3_SOURCES = [
    "native/_blake3.pyx",
    "native/blake3/blake3.c",
    "native/blake3/blake3_dispatch.c",
    "native/blake3/blake3_portable.c",
    *(f"native/blake3_{simd}_target.c" for simd in (() if _ASM else _SIMD) + ("neon",)),
]
BLAKE3_ASM = [f"native/blake3/blake3_{simd}_x86-64_unix.S" for simd in _SIMD] if _ASM else []
# Elsewhere: the portable code, plus NEON on AArch64 (blake3_impl.h's own choice).
BLAKE3_MACROS = [] if _X86 else [(f"BLAKE3_NO_{simd.upper()}", None) for simd in _SIMD]

setup(
    ext_modules=cythonize(
        [Extension(f"ingest.{name}", sources=[f"native/{name}.pyx", *(f"native/{c}.c" for c in cs)],
                   include_dirs=["native"], extra_compile_args=["-O3"])
         for name, cs in [("_chunker", ["gearcdc"]), ("_bytegroup", ["bytegroup"]),
                          ("_mapped", ["mapguard", "listdir"])]]
        + [Extension("ingest._blake3", sources=BLAKE3_SOURCES, include_dirs=["native"],
                     define_macros=BLAKE3_MACROS, extra_objects=BLAKE3_ASM,
                     depends=["native/blake3_target.h"],
                     extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
    ),
)
