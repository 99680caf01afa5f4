"""The build of pymc: pure Python, plus an optional compiled reader where it can be built.

``pymc/protocol/speedups.c`` is compiled when a C compiler and the Python headers exist. When they
do not, or the compilation fails for any reason, the build says so and goes on without it:
pymc then runs its pure-Python reader, which is the reference. ``PYMC_NO_EXTENSIONS=1``
(any value but empty or ``0``) skips the extension at build time; at run time the same
variable makes ``pymc`` ignore a built one.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _no_extensions() -> bool:
    return os.environ.get("PYMC_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a failed build leaves pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # setup tools raise several unrelated types here
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: BaseException) -> None:
        sys.stderr.write(
            f"WARNING: pymc's optional C reader was not built ({exc}); "
            "pymc will use its pure-Python reader.\n"
        )


ext_modules = []
if not _no_extensions() and sys.implementation.name == "cpython":
    ext_modules.append(
        Extension("pymc.protocol.speedups", sources=["pymc/protocol/speedups.c"], optional=True)
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
