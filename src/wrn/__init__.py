"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) in PyTorch."""

__version__ = "0.1.0"

# The public API, loaded on first use: `import wrn` (and so `wrn --help`) does not import torch,
# and a model alone does not pull in the trainer. predict lives in wrn.inference, not in a module
# named wrn.predict: importing such a submodule would replace the function wrn.predict with it.
_API = {"create_model": "wrn.models", "list_models": "wrn.models", "load_checkpoint": "wrn.train.checkpoint",
        "predict": "wrn.inference", "import_checkpoint": "wrn.importer"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'wrn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])


__all__ = ["create_model", "list_models", "load_checkpoint", "import_checkpoint", "predict", "__version__"]
