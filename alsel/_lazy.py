"""torch on first use: the modules the command line needs to start (`alsel --help`, `alsel info`,
`alsel strategies`, the registry) name torch through this stand-in, so starting takes a fraction of a
second instead of the 3-4 s of `import torch`; the first attribute looked up imports it for real."""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A module imported when one of its attributes is first needed; afterwards its attributes are
    copied here, so later lookups cost what a plain module's do."""

    def __getattr__(self, attr: str):
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


torch = LazyModule("torch")
