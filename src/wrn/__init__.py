"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) in PyTorch."""

__version__ = "0.1.0"

from wrn.models import create_model, list_models  # noqa: E402
from wrn.predict import predict  # noqa: E402  (the function shadows its module's name here, on purpose)


def __getattr__(name):
    # Loaded on first use so that `import wrn` for a model alone does not pull in the trainer.
    if name == "load_checkpoint":
        from wrn.train.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "import_checkpoint":
        from wrn.importer import import_checkpoint

        return import_checkpoint
    raise AttributeError(f"module 'wrn' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "load_checkpoint", "import_checkpoint", "predict", "__version__"]
