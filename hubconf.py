"""torch.hub entry points: one per registered model name (``-`` becomes ``_``), plus ``create_model``.

    model = torch.hub.load("path/to/wrn", "wrn_28_10", source="local", num_classes=100, dropout=0.3)
    model = torch.hub.load("path/to/wrn", "wide_resnet50_2", source="local", weights="wrn50_2.pth")
    model = torch.hub.load("path/to/wrn", "create_model", "wrn-40-2", source="local", block=(3, 1, 3))

``weights`` (optional) is a state-dict file (.pth or .safetensors, e.g. torchvision's) loaded strictly.
No weights are downloaded: the project publishes none.
"""

import os
import sys

dependencies = ["torch"]

# Loaded from a checkout (torch.hub clones the repo): the package lives under src/.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from wrn.models import create_model as _create_model  # noqa: E402
from wrn.models import list_models as _list_models  # noqa: E402
from wrn.models.imagenet import load_external_weights as _load_weights  # noqa: E402


def create_model(name, weights=None, **kwargs):
    """Any registered model by name, e.g. ``create_model("wrn-28-10", num_classes=100)``."""
    model = _create_model(name, **kwargs)
    if weights is not None:
        _load_weights(model, weights)
    return model


def _entry_point(name):
    def build(weights=None, **kwargs):
        return create_model(name, weights=weights, **kwargs)

    build.__name__ = build.__qualname__ = name.replace("-", "_")
    build.__doc__ = f"``{name}`` (keyword arguments as wrn.create_model; ``weights``: optional state-dict file)."
    return build


for _name in _list_models():
    globals()[_name.replace("-", "_")] = _entry_point(_name)
