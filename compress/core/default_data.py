"""The embedded default image set: photographs shipped by installed packages, no network needed.

Splits are fixed by name. ``sporco``'s barbara and monarch are Set14 images and kodim23 is a Kodak
test image, so all three stay in the evaluation split and are never trained on. Checkpoints are
chosen on :func:`validation_paths`, which leaves out the two Set14 images so that choosing never
sees Set5 or Set14. Licences are listed
per image; DEFAULT_DATA.md in ``artifacts/default`` repeats them.

Training adds the photographs among Debian's wallpaper packages (:data:`WALLPAPERS`: 15 of
``lomiri-wallpapers-16.04`` and 2 of ``lomiri-wallpapers-20.04`` (CC0 / CC-BY / CC-BY-SA), 12 of
``mate-backgrounds`` and 10 of ``plasma-workspace-wallpapers`` (GPL-2+), 10 of ``lxqt-themes``
(CC-BY-SA-3.0); the renders and drawings in those packages and all of ``ukui-wallpapers`` are left
out), shrunk to at most ``WALLPAPER_MAX_SIDE`` pixels first (a recipe's ``wallpaper_max_side`` may
allow more) since most are JPEGs whose finest detail is compression noise (the user's own training
folders are not shrunk unless a recipe's ``max_side`` asks).
``make train`` installs the packages; missing ones are skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from compress.core.errors import InputError

BACKGROUNDS_DIR = "/usr/share/backgrounds"
PLASMA_DIR = "/usr/share/wallpapers"
LXQT_DIR = "/usr/share/lxqt/wallpapers"
WALLPAPER_MAX_SIDE = 1200
SPLITS = ("train", "calibration", "evaluation")


@dataclasses.dataclass(frozen=True)
class PackagedImage:
    """A photograph inside an installed Python package."""

    package: str
    relpath: str
    split: str
    licence: str
    benchmark: str = ""

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
    PackagedImage("sporco", "data/barbara.png", "evaluation", "attributed to Allen Gersho", "Set14"),
    PackagedImage("sporco", "data/monarch.png", "evaluation", "Waterloo BragZone", "Set14"),
    PackagedImage("sporco", "data/kodim23.png", "evaluation", "Kodak, released for unrestricted use"),
)


def split_paths(split: str) -> list[Path]:
    """Files of one split of the packaged images."""
    if split not in SPLITS:
        raise InputError(f"default image set: split must be one of {SPLITS}, got {split!r}")
    return [img.path() for img in IMAGES if img.split == split]


def validation_paths() -> list[Path]:
    """Images that choose checkpoints for the default data: the calibration split and the evaluation
    images in no public benchmark (astronaut, grace_hopper, chelsea, kodim23), never trained on.

    barbara and monarch are left out: they are Set14 images, and a choice made on them would bias
    the Set14 figures reported for the chosen model.
    """
    return [img.path() for img in IMAGES
            if img.split == "calibration" or (img.split == "evaluation" and not img.benchmark)]


#: Names ``eval --data`` takes instead of a folder: the embedded evaluation split (chelsea, barbara,
#: monarch, kodim23) and the images that choose checkpoints (:func:`validation_paths`).
NAMED_SETS = ("embedded", "validation")


def named_set(name: str) -> list[Path] | None:
    """The files of the named image set ``name`` (one of :data:`NAMED_SETS`), or None for any other
    string, which callers then read as a folder (``./embedded`` for a folder of that name)."""
    if name not in NAMED_SETS:
        return None
    return split_paths("evaluation") if name == "embedded" else validation_paths()


@dataclasses.dataclass(frozen=True)
class Wallpaper:
    """A photograph shipped by a Debian wallpaper package, by its installed path."""

    package: str
    file: str
    licence: str

    def path(self) -> Path:
        return Path(self.file)


def _lomiri(release: str, licence: str, *names: str) -> tuple[Wallpaper, ...]:
    return tuple(Wallpaper(f"lomiri-wallpapers-{release}", f"{BACKGROUNDS_DIR}/{n}.jpg", licence) for n in names)


def _mate(*names: str) -> tuple[Wallpaper, ...]:
    return tuple(Wallpaper("mate-backgrounds", f"{BACKGROUNDS_DIR}/mate/nature/{n}.jpg", "GPL-2+") for n in names)


def _plasma(*names: str) -> tuple[Wallpaper, ...]:
    return tuple(Wallpaper("plasma-workspace-wallpapers", f"{PLASMA_DIR}/{n}/contents/images/2560x1600.jpg", "GPL-2+")
                 for n in names)


def _lxqt(*names: str) -> tuple[Wallpaper, ...]:
    return tuple(Wallpaper("lxqt-themes", f"{LXQT_DIR}/{n}", "CC-BY-SA-3.0") for n in names)


#: Photographs only (checked by eye); licences from each package's ``copyright`` file (LXQt's from the
#: ``License`` file beside its wallpapers).
WALLPAPERS: tuple[Wallpaper, ...] = (
    *_lomiri("16.04", "CC-BY-4.0", "aitzgorri_by_Aitzol_Berasategi", "friends_by_Aitzol_Berasategi",
             "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "sunset_by_Aitzol_Berasategi",
             "Picture_0B_by_freespace", "Picture_1A_by_freespace", "umang_by_Abhishek_Mudgal", "Wine_by_Jakkub_Mede"),
    *_lomiri("16.04", "CC-BY-SA-4.0", "analogpattern_by_Peter_Nerlich", "Bridge_by_Sander_Klootwijk",
             "Dragonfly_by_Bolly", "free_by_Peter_Nerlich", "greentock_by_Peter_Nerlich"),
    *_lomiri("16.04", "CC0-1.0", "seeding_by_Clements_Engelhardt"),
    *_lomiri("20.04", "CC-BY-SA-3.0", "Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus"),
    *_mate("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
           "TwoWings", "Wood", "YellowFlower"),
    *_plasma("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
             "OneStandsOut", "Path", "summer_1am"),
    *_lxqt("after-the-rain.jpg", "appleflower.png", "beam.png", "butterfly.png", "cloud.png", "drop.png",
           "flowers.png", "fog.jpg", "this-is-not-windows.jpg", "Valendas.png"),
)
WALLPAPER_PACKAGES = tuple(sorted({w.package for w in WALLPAPERS}))


def wallpaper_paths() -> list[Path]:
    """The wallpaper photographs that are installed (an empty list when none is)."""
    return [w.path() for w in WALLPAPERS if w.path().is_file()]


def training_images(data: str) -> list[Path]:
    """Fine-tuning and training images: ``default`` (the packaged train split plus the installed
    wallpaper photographs) or every image of the folder ``data`` (``DATA=``)."""
    from compress.core.data import list_images

    if data == "default":
        return split_paths("train") + wallpaper_paths()
    return list_images(data)


def training_pairs(data: str, scale: int, max_side: int = 0, wallpaper_max_side: int = WALLPAPER_MAX_SIDE) -> list:
    """(HR, LR) pairs of :func:`training_images` in 8 bits (uint8), each image shrunk to ``max_side``
    first (0: never); the wallpapers of the default data are shrunk to ``wallpaper_max_side`` (default
    ``WALLPAPER_MAX_SIDE``) in any case.

    The one loader of training data, used by ``train``, pruning fine-tuning, QAT and tfmot. A folder
    of the user's (``DATA=``) is taken as it is unless ``max_side`` says otherwise.
    """
    from compress.core.data import load_pairs

    if data != "default":
        return load_pairs(training_images(data), scale, max_side or None, u8=True)
    walls = min(max_side or wallpaper_max_side, wallpaper_max_side)
    return (load_pairs(split_paths("train"), scale, max_side or None, u8=True)
            + load_pairs(wallpaper_paths(), scale, walls, u8=True))
