import dataclasses

import pytest

from compress.core.errors import InputError
from compress.core.recipe import from_mapping, load_recipe, to_dict
from compress.pipeline.trainer import TrainRecipe
from tests.conftest import REPO


def test_shipped_training_recipes_load():
    for path in sorted((REPO / "compress" / "recipes").glob("*.toml")):
        recipe = load_recipe(TrainRecipe, path)
        assert recipe.train.steps > 0


def test_round_trip():
    recipe = from_mapping(TrainRecipe, {"arch": "rrdb", "scale": 4, "train": {"steps": 7, "lr": 1e-3}})
    assert from_mapping(TrainRecipe, to_dict(recipe)) == recipe
    assert dataclasses.replace(recipe, scale=4) == recipe


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"arhc": "edsr"}, r"unknown field\(s\) \['arhc'\]"),
        ({"arch": "unet"}, "arch must be one of"),
        ({"train": {"lr": -1.0}}, r"recipe.train: TrainConfig.lr must be > 0, got -1.0"),
        ({"train": {"steps": "ten"}}, r"recipe.train.steps: expected int, got 'ten'"),
        ({"patch": {"lr_patch": 1}}, "PatchConfig.lr_patch must be >= 4"),
    ],
)
def test_bad_values_name_the_field(mapping, message):
    with pytest.raises(InputError, match=message):
        from_mapping(TrainRecipe, mapping)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("arch = [")
    with pytest.raises(InputError, match="r.toml: not valid TOML"):
        load_recipe(TrainRecipe, path)


@pytest.mark.parametrize("body, match", [
    ("[train]\nlr = \"fast\"\n", r"train\.lr: expected a number, got 'fast'"),
    ("[train]\nlr = inf\n", r"train\.lr: expected a finite number, got inf"),
    ("[train]\nlr = nan\n", r"train\.lr: expected a finite number"),
    ("[train]\nsteps = 2.5\n", r"train\.steps: expected an integer, got 2\.5"),
    ("[train]\nsteps = true\n", r"train\.steps: expected int, got True"),
    ("[train]\nprecision = \"fp16\"\n", r"precision must be one of"),
])
def test_every_field_is_type_checked_with_file_field_and_value(tmp_path, body, match):
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(InputError, match=match) as info:
        load_recipe(TrainRecipe, path)
    assert str(path) in str(info.value)


def test_a_utf8_bom_is_accepted_and_integral_floats_are_ints(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[train]\nsteps = 20.0\n".encode("utf-8"))
    assert load_recipe(TrainRecipe, path).train.steps == 20
