# The native kernels (one module per concept); everything else is declared in pyproject.toml.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension(f"ingest.{name}", sources=[f"native/{name}.pyx", f"native/{c}.c"],
                   include_dirs=["native"], extra_compile_args=["-O3"])
         for name, c in [("_chunker", "gearcdc"), ("_bytegroup", "bytegroup")]],
        compiler_directives={"language_level": "3"},
    ),
)
