"""What the project knows about each named dataset, in one place.

Classes (in the official label order), images per split, the published per-channel mean/std,
the short name used in run names, and the official files with their md5. Readers, the
downloader, the config's ``data.normalize=paper``, the sweep's cost estimates and the report
all read these facts here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from wrn.errors import UserError

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    md5: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    short: str  # in run names, e.g. "c10_wrn-28-10"
    classes: tuple[str, ...]  # label order; empty where the names come from the data's folders
    splits: dict[str, int]  # images per split
    # Published per-channel statistics on the [0, 1] scale; None where there are none to use.
    mean: Triple | None
    std: Triple | None
    base_url: str = ""  # "" = not downloadable (the user passes a path)
    files: tuple[RemoteFile, ...] = ()
    coarse_classes: tuple[str, ...] = ()  # CIFAR-100's 20 superclasses
    class_count: int = field(default=0, repr=False)  # only where ``classes`` is empty

    @property
    def num_classes(self) -> int:
        return len(self.classes) or self.class_count


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The "python version" meta file's fine_label_names / coarse_label_names (alphabetical there too).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip

_TORONTO = "https://www.cs.toronto.edu/~kriz/"

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", "c10", CIFAR10_CLASSES, {"train": 50_000, "test": 10_000},
        # The population std over all training pixels: the often-copied (0.2023, 0.1994, 0.2010)
        # is a mean of per-image stds, and wrong as a normalisation constant.
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        base_url=_TORONTO, files=(RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar100": DatasetInfo(
        "cifar100", "c100", CIFAR100_CLASSES, {"train": 50_000, "test": 10_000},
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        base_url=_TORONTO, files=(RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        coarse_classes=CIFAR100_COARSE_CLASSES,
    ),
    "svhn": DatasetInfo(
        # Format 2 (32x32 crops); label i is digit i. The paper only divides pixels by 255, so
        # there are no constants to normalise with (data.normalize=none).
        "svhn", "svhn", tuple(str(d) for d in range(10)), {"train": 73_257, "test": 26_032, "extra": 531_131},
        mean=None, std=None,
        base_url="http://ufldl.stanford.edu/housenumbers/",
        files=(
            RemoteFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
            RemoteFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
            RemoteFile("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
        ),
    ),
    "imagenet": DatasetInfo(
        # ILSVRC-2012: not downloadable (it needs a licence); class names are its folders' WordNet ids.
        "imagenet", "imagenet", (), {"train": 1_281_167, "val": 50_000},
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), class_count=1000,
    ),
}  # fmt: skip

# Names ``load_dataset`` downloads; "-coarse" selects CIFAR-100's 20 superclasses.
NAMES: tuple[str, ...] = (*(n for n, d in DATASETS.items() if d.files), "cifar100-coarse")


def get(name: str) -> DatasetInfo:
    """The facts of dataset ``name``; a UserError naming the closest known name otherwise."""
    info = DATASETS.get(name)
    if info is None:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown dataset {name!r}: {hint}known datasets: {', '.join(DATASETS)}")
    return info
