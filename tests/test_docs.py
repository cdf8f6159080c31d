"""Every public function and class of the library says what it is (the Python API is documented where
it is defined): module-level functions and classes, and their public methods, except the methods of
the protocols documented in alsel.stream (Reducer: init, update, finish, init_low; Rows: load, take, release,
read) and methods that override a documented base-class method (a strategy's gain and allocate)."""

import importlib
import inspect
import pkgutil

import alsel

PROTOCOL = {"init", "update", "finish", "init_low", "load", "take", "release", "read"}  # alsel.stream's protocols


def documented_above(cls, name: str) -> bool:
    return any((getattr(vars(base).get(name), "__doc__", None) or "").strip() for base in cls.__mro__[1:])


def public_objects():
    for info in [None, *pkgutil.walk_packages(alsel.__path__, "alsel.")]:
        mod = importlib.import_module("alsel" if info is None else info.name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj):
                for k, f in vars(obj).items():
                    if inspect.isfunction(f) and not k.startswith("_") and k not in PROTOCOL \
                            and not documented_above(obj, k):
                        yield f"{mod.__name__}.{name}.{k}", f


def test_every_public_function_has_a_docstring():
    missing = [name for name, obj in public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, missing
