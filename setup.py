# The native kernels (one module per concept); everything else is declared in pyproject.toml.
import platform

from Cython.Build import cythonize
from setuptools import Extension, setup

# ingest._blake3: the official BLAKE3 C code, vendored unmodified in native/blake3/.
# Its x86 SIMD files need their own target flags, which setuptools cannot give one
# source; native/blake3_*_target.c include them under a target pragma instead.  Each
# wrapper compiles to nothing off its architecture, so all are always listed.
BLAKE3_SOURCES = [
    "native/_blake3.pyx",
    "native/blake3/blake3.c",
    "native/blake3/blake3_dispatch.c",
    "native/blake3/blake3_portable.c",
    *(f"native/blake3_{simd}_target.c" for simd in ("sse2", "sse41", "avx2", "avx512", "neon")),
]
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")
# Elsewhere: the portable code, plus NEON on AArch64 (blake3_impl.h's own choice).
BLAKE3_MACROS = [] if _X86 else [(f"BLAKE3_NO_{simd}", None) for simd in ("SSE2", "SSE41", "AVX2", "AVX512")]

setup(
    ext_modules=cythonize(
        [Extension(f"ingest.{name}", sources=[f"native/{name}.pyx", f"native/{c}.c"],
                   include_dirs=["native"], extra_compile_args=["-O3"])
         for name, c in [("_chunker", "gearcdc"), ("_bytegroup", "bytegroup")]]
        + [Extension("ingest._blake3", sources=BLAKE3_SOURCES, include_dirs=["native"],
                     define_macros=BLAKE3_MACROS, extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
    ),
)
