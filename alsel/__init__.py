"""alsel: active learning for image-text retrieval (hard-negative selection, Jo et al. 2405.16301).

Every stage is a function over stores and arrays; `cli.py` is only the command-line front. On arrays
(numpy or torch, unit rows), without files: `xi`, `hard_negative_scores`, `select`, `recall`
(alsel.arrays). The names below are imported on first use (PEP 562), so `import alsel` does not load
torch until a stage needs it.
"""

__version__ = "0.1.0"

from .errors import AlselError  # noqa: E402

_EXPORTS = {
    "store": ("Embeddings", "Paired", "Store", "load_paired", "open_store", "write_store"),
    "stream": ("ArrayRows", "resolve_device", "sweep"),
    "thresholds": ("ThresholdParams", "Thresholds", "compute_xi", "load_thresholds", "make_thresholds"),
    "scoring": ("score_pool", "score_rows"),
    "selection": ("Selection", "read_selection", "save_selection"),
    "strategies.kcenter": ("kcenter_greedy",),
    "strategies.scores": ("load_scores", "top_b"),
    "synth": ("make_world", "synth_stores"),
    "arrays": ("HardNegativeScores", "hard_negative_scores", "memory_store", "recall", "select", "xi"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["AlselError", "strategies", *sorted(_WHERE)]


def __getattr__(name: str):
    import importlib

    if name == "strategies":  # the registry: strategies.select, strategies.Inputs, ...
        return importlib.import_module(".strategies", __name__)
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alsel' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
