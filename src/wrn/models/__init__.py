"""Model families; importing this package registers every builder."""

from wrn.models.registry import create_model, list_models, register_model

# Importing the family modules registers their builders.
from wrn.models import wide_resnet, resnet, imagenet, variants  # noqa: E402,F401
from wrn.models.imagenet import load_external_weights  # noqa: E402

__all__ = ["create_model", "list_models", "register_model", "load_external_weights"]
