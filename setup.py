# One native extension; everything else is declared in pyproject.toml.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension(
            "ingest._chunker",
            sources=["native/_chunker.pyx", "native/gearcdc.c"],
            include_dirs=["native"],
            extra_compile_args=["-O3"],
        )],
        compiler_directives={"language_level": "3"},
    ),
)
