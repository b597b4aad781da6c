"""Package attributes that load their module on first use (PEP 562), so that importing a package (for the command
line: `butd_frcnn`, `butd_frcnn.extraction`) costs nothing until one of its names is used."""

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """The `__getattr__` and `__dir__` of `package`, whose `exports` map each public name to the submodule that
    defines it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{exports[name]}", package), name)

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__
