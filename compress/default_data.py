"""The embedded default image set: photographs shipped by installed packages, no network needed.

Splits are fixed by name. ``sporco``'s barbara and monarch are Set14 images and kodim23 is a Kodak
test image, so all three stay in the evaluation split and are never trained on. Licences are listed
per image; DEFAULT_DATA.md in ``artifacts/default`` repeats them.

Training may add the 15 CC-BY / CC-BY-SA photographs of Debian's ``lomiri-wallpapers-16.04``
(``apt-get install lomiri-wallpapers-16.04``), shrunk to at most ``LOMIRI_MAX_SIDE`` pixels first
since they are JPEGs whose finest detail is compression noise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from compress.errors import InputError

LOMIRI_DIR = Path("/usr/share/backgrounds")
LOMIRI_MAX_SIDE = 1200
SPLITS = ("train", "calibration", "evaluation")


@dataclasses.dataclass(frozen=True)
class PackagedImage:
    """A photograph inside an installed Python package."""

    package: str
    relpath: str
    split: str
    licence: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"default image set: package {self.package!r} is not installed (pip install {self.package})")
        return Path(next(iter(spec.submodule_search_locations))) / self.relpath


IMAGES: tuple[PackagedImage, ...] = (
    PackagedImage("skimage", "data/rocket.jpg", "train", "public domain (NASA)"),
    PackagedImage("skimage", "data/hubble_deep_field.jpg", "train", "public domain (NASA)"),
    PackagedImage("skimage", "data/motorcycle_left.png", "train", "Middlebury stereo 2014, free for research"),
    PackagedImage("skimage", "data/coffee.png", "train", "CC0 (Rachel Michetti)"),
    PackagedImage("sklearn", "datasets/images/china.jpg", "train", "CC-BY 2.0"),
    PackagedImage("sklearn", "datasets/images/flower.jpg", "train", "CC-BY 2.0"),
    PackagedImage("sporco", "data/sail.png", "train", "Waterloo BragZone, free of copyright restrictions"),
    PackagedImage("sporco", "data/tulips.png", "train", "Waterloo BragZone, free of copyright restrictions"),
    PackagedImage("skimage", "data/astronaut.png", "calibration", "public domain (NASA)"),
    PackagedImage("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "calibration", "public domain (US Navy)"),
    PackagedImage("skimage", "data/chelsea.png", "evaluation", "public domain (Stefan van der Walt)"),
    PackagedImage("sporco", "data/barbara.png", "evaluation", "attributed to Allen Gersho; Set14 image"),
    PackagedImage("sporco", "data/monarch.png", "evaluation", "Waterloo BragZone; Set14 image"),
    PackagedImage("sporco", "data/kodim23.png", "evaluation", "Kodak, released for unrestricted use"),
)


def split_paths(split: str) -> list[Path]:
    """Files of one split of the packaged images."""
    if split not in SPLITS:
        raise InputError(f"default image set: split must be one of {SPLITS}, got {split!r}")
    return [img.path() for img in IMAGES if img.split == split]


def lomiri_paths() -> list[Path]:
    """The Debian wallpapers when installed, else an empty list."""
    return sorted(LOMIRI_DIR.glob("*_by_*.jpg")) if LOMIRI_DIR.is_dir() else []
