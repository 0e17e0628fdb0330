"""emovision: facial emotion recognition you can reproduce, tune and demo."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_classifier", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import emovision` stays light (no torch import) for CLI start-up.
    if name == "load_classifier":
        from emovision.inference import load_classifier

        return load_classifier
    raise AttributeError(f"module 'emovision' has no attribute {name!r}")
