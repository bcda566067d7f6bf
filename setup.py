"""The import package's subpackages, found when the package is built.

The four layer folders sit at the top of the repository and are the subpackages of
``jobworker`` in an install (``package-dir`` in pyproject.toml maps each one). setuptools
can find packages but not rename them, so this names each found folder under
``jobworker``: a new subpackage needs no entry anywhere. Everything else about the build
is in pyproject.toml.
"""

from setuptools import find_packages, setup

LAYERS = ("domain", "application", "adapters", "entrypoints")

setup(
    packages=[
        "jobworker",
        *(
            f"jobworker.{name}"
            for name in find_packages(include=[*LAYERS, *(f"{layer}.*" for layer in LAYERS)])
        ),
    ]
)
