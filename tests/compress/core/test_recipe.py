import dataclasses
import os

import pytest

from compress.core.errors import InputError
from compress.core.recipe import MAX_RECIPE_BYTES, from_mapping, load_recipe, to_dict, with_seed
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
        ({"train": {"lr": -1.0}}, r"recipe.train: TrainConfig.lr must be in \(0, 1.0\], got -1.0"),
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
    # values that used to load and then end in a traceback (or train the wrong way) at run time
    ("[train]\nlr = 1" + "0" * 400 + "\n", r"train\.lr: integer 10+\.\.\. \(401 chars\) is outside TOML's 64-bit range"),
    ("[train]\nseed = 100000000000000000000000000000\n", r"train\.seed: integer .* outside TOML's 64-bit range"),
    ("[train]\nseed = -1\n", r"TrainConfig\.seed must be >= 0"),
    ("[patch]\nseed = -1\n", r"PatchConfig\.seed must be >= 0"),
    ("[patch]\nbatch_size = 1000000000\n", r"PatchConfig\.batch_size must be in \[1, 4096\]"),
    ("[patch]\nlr_patch = 1000000000\n", r"PatchConfig\.lr_patch must be <= 1024"),
    ("[train]\ngrad_clip = -1.0\n", r"TrainConfig\.grad_clip must be finite and >= 0"),
    ("[train]\nmin_lr_ratio = -5.0\n", r"TrainConfig\.min_lr_ratio must be in \[0, 1\]"),
    ("[train]\nmin_lr_ratio = 7.0\n", r"TrainConfig\.min_lr_ratio must be in \[0, 1\]"),
    ("[train]\nval_every = -1\n", r"TrainConfig\.val_every must be >= 0"),
    ("[train]\nckpt_every = -1\n", r"TrainConfig\.ckpt_every must be >= 0"),
    ("[train]\nwarmup_steps = -10\n", r"TrainConfig\.warmup_steps must be >= 0"),
    ("num_feat = 0\n", r"EDSRConfig: num_feat=0"),
    ("res_scale = 0.0\n", r"EDSRConfig\.res_scale must be in \(0, 1\], got 0.0"),
    ("res_scale = 1e300\n", r"EDSRConfig\.res_scale must be in \(0, 1\], got 1e\+300"),
    ("[train]\nlr = 1e300\n", r"TrainConfig\.lr must be in \(0, 1\.0\], got 1e\+300"),
    ("[train]\nsteps = 10000000000\n", r"TrainConfig\.steps must be in 0\.\.1000000000, got 10000000000"),
    ("[train]\nsteps = 0\n", r"train\.steps must be >= 1 in a training recipe, got 0"),
    ("[patch]\nlr_patch = 200\nbatch_size = 4096\n", r"batch_size 4096 x lr_patch 200\^2 is over 4194304 LR pixels"),
    ("arch = \"srcnn\"\nnum_feat = -1\n", r"num_feat must be in 0\.\.1024, got -1"),
    ("arch = \"rrdb\"\nscale = 4\nnum_grow_ch = 0\n", r"RRDBConfig: .*num_grow_ch=0 invalid"),
    ("scale = 5\n", r"EDSRConfig\.scale must be 2, 3 or 4"),
    ("max_side = -1\n", r"max_side must be >= 0"),
    ("wallpaper_max_side = 0\n", r"wallpaper_max_side must be 64\.\.8192, got 0"),
    ("data = \"\"\n", r"data must be 'default' or a folder"),
    # floats past 2**53 are no integers: their range was checked before the conversion
    ("[train]\nseed = 1e300\n", r"train\.seed: expected an integer, got 1e\+300"),
    ("[train]\nsteps = 2e19\n", r"train\.steps: expected an integer, got 2e\+19"),
    # hyperparameters the architecture lacks, and sizes past any SR network
    ("arch = \"srcnn\"\nnum_block = 20\n", r"num_block is no hyperparameter of srcnn \(it has \['num_feat'\]\), got 20"),
    ("num_grow_ch = -5\n", r"num_grow_ch must be in 0\.\.1024, got -5"),
    ("arch = \"rrdb\"\nscale = 4\nres_scale = 0.5\n", r"res_scale is no hyperparameter of rrdb \(it has \['num_block', "),
    ("num_feat = 9223372036854775807\n", r"num_feat must be in 0\.\.1024"),
    ("arch = \"" + "x" * 100_000 + "\"\n", r"arch must be one of \['edsr', 'rrdb', 'srcnn'\], got 'x+\.\.\. \(100002 chars\)$"),
])
def test_every_field_is_checked_with_file_field_and_value(tmp_path, body, match):
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(InputError, match=match) as info:
        load_recipe(TrainRecipe, path)
    assert str(info.value).startswith(f"{path}: ")  # the file, then the field


def test_a_utf8_bom_is_accepted_and_integral_floats_are_ints(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[train]\nsteps = 20.0\n".encode("utf-8"))
    assert load_recipe(TrainRecipe, path).train.steps == 20


def test_a_missing_field_of_a_table_is_named(tmp_path):
    from pruning.recipe import PruneRecipe

    path = tmp_path / "p.toml"
    path.write_text("[schedule]\nfinal_sparsity = 0.5\nend_step = 10\n")
    with pytest.raises(InputError, match=r"p\.toml: schedule: missing field\(s\) \['initial_sparsity', 'begin_step'\]"):
        load_recipe(PruneRecipe, path)


def test_quantize_and_prune_recipe_tables_are_checked(tmp_path):
    from pruning.recipe import PruneRecipe
    from quantization.recipe import QuantRecipe

    cases = [(QuantRecipe, "[tflite_qat]\nsteps = -5\n", r"TFLiteQATConfig\.steps must be >= 1"),
             (QuantRecipe, "[tflite_qat]\nlr = 0.0\n", r"TFLiteQATConfig\.lr must be > 0"),
             (QuantRecipe, "[calibration]\nmax_images = -1\n", r"CalibrationConfig\.max_images must be >= 0"),
             (QuantRecipe, "[calibration]\nseed = -1\n", r"CalibrationConfig\.seed must be >= 0"),
             (QuantRecipe, "calibration_data = \"\"\n", r"calibration_data must be 'default' or a folder"),
             (PruneRecipe, "data = \"\"\n", r"data must be 'default' or a folder"),
             (PruneRecipe, "[schedule]\ninitial_sparsity = 0.0\nfinal_sparsity = 0.5\nbegin_step = 0\n"
                           "end_step = 1000000000\nfrequency = 1\n[train]\nsteps = 1000000000\n",
              r"1000000000 pruning events"),
             (PruneRecipe, "method = \"unstructured\"\ncriterion = \"taylor\"\nround_to = 4\n",
              r"r.toml: round_to, criterion: only method = 'channel' reads it, and this recipe's method is "
              r"'unstructured'; remove it"),
             (PruneRecipe, "method = \"channel\"\nskip_first_last = false\n",
              r"skip_first_last: only method = 'unstructured' reads it")]
    for cls, body, match in cases:
        path = tmp_path / "r.toml"
        path.write_text(body)
        with pytest.raises(InputError, match=match):
            load_recipe(cls, path)


def test_deep_nesting_and_long_values_are_one_short_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(InputError, match=r"deep\.toml: not a usable recipe \(tables or arrays nested too deeply\)"):
        load_recipe(TrainRecipe, path)
    path.write_text("[train]\nlr = \"" + "f" * 100_000 + "\"\n")
    with pytest.raises(InputError, match=r"train\.lr: expected a number, got 'f+\.\.\. \(100002 chars\)$"):
        load_recipe(TrainRecipe, path)


def test_a_recipe_is_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block until a writer comes
    with pytest.raises(InputError, match=r"fifo\.toml: the recipe is not a regular file$"):
        load_recipe(TrainRecipe, fifo)
    with pytest.raises(InputError, match=r": the recipe is not a regular file$"):
        load_recipe(TrainRecipe, tmp_path)
    big = tmp_path / "big.toml"
    big.write_text("#" * (MAX_RECIPE_BYTES + 1))
    with pytest.raises(InputError, match=r"big\.toml: recipe is over 1024 KiB$"):
        load_recipe(TrainRecipe, big)
    with pytest.raises(InputError, match=r"none\.toml: recipe not found$"):
        load_recipe(TrainRecipe, tmp_path / "none.toml")


def test_huge_integer_literals_are_one_short_error(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[train]\nsteps = " + "9" * 5000 + "\n")  # past Python's int-conversion limit
    with pytest.raises(InputError, match=r"r\.toml: not a usable recipe: Exceeds the limit \(4300 digits\)") as err:
        load_recipe(TrainRecipe, path)
    assert len(str(err.value)) - len(str(path)) < 200
    path.write_text("[train]\nsteps = " + "9" * 4000 + "\n")
    with pytest.raises(InputError, match=r"train\.steps: integer 9+\.\.\. \(4000 chars\) is outside") as err:
        load_recipe(TrainRecipe, path)
    assert len(str(err.value)) - len(str(path)) < 200


def _seeds(tree, path=""):
    """{dotted path: value} of every ``seed`` in a nested dict."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found.update(_seeds(value, f"{path}{key}."))
        elif key == "seed":
            found[path + key] = value
    return found


@pytest.mark.parametrize("cls_path, recipe", [("pruning.recipe:PruneRecipe", "pruning/recipes/unstructured.toml"),
                                               ("quantization.recipe:QuantRecipe", "quantization/recipes/default.toml")])
def test_with_seed_sets_every_seed_and_nothing_else(cls_path, recipe):
    import importlib

    module, name = cls_path.split(":")
    original = load_recipe(getattr(importlib.import_module(module), name), REPO / recipe)
    reseeded = with_seed(original, 12345)
    before, after = to_dict(original), to_dict(reseeded)
    seeds = _seeds(after)
    assert len(seeds) >= 2 and set(seeds.values()) == {12345}, seeds  # patch and train at least
    assert seeds.keys() == _seeds(before).keys()
    for dotted in seeds:  # put the old seeds back: the rest of the recipe is untouched
        *parents, leaf = dotted.split(".")
        node = after
        for key in parents:
            node = node[key]
        node[leaf] = _seeds(before)[dotted]
    assert after == before
