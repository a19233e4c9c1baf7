"""Prune recipes: the shipped ones load; bad values are named with their field."""

import pytest

from compress.core.errors import InputError
from compress.core.recipe import from_mapping, load_recipe
from pruning.recipe import PruneRecipe
from tests.conftest import REPO

TINY = {
    "schedule": {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 4, "frequency": 2},
    "patch": {"lr_patch": 16, "batch_size": 2},
    "train": {"steps": 6, "lr": 1e-4, "distill_weight": 0.5},
}


def test_shipped_prune_recipes_load():
    for path in sorted((REPO / "pruning" / "recipes").glob("*.toml")):
        assert load_recipe(PruneRecipe, path).schedule.power == 3


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"method": "random"}, "method must be one of"),
        ({"criterion": "l1"}, "criterion must be one of"),
        ({"upsample_final_sparsity": 1.0}, r"upsample_final_sparsity must be in \[0, 1\)"),
        ({"schedule": {**TINY["schedule"], "final_sparsity": 1.2}}, r"final_sparsity must be in \[0, 1\)"),
        ({"train": {"steps": 2}}, r"train.steps \(2\) must be > schedule.end_step \(4\)"),
        ({"train": {"steps": 4}}, r"train.steps \(4\) must be > schedule.end_step \(4\): the last pruning step needs"),
        ({"criterion": "taylor", "train": {"steps": 6, "distill_weight": 1.0}}, "criterion taylor ranks channels by loss"),
        ({"schedule": {**TINY["schedule"], "freq": 3}}, r"unknown field\(s\) \['freq'\]"),
        ({"method": "unstructured", "train": {"steps": 6, "ema_decay": 0.99}}, "train.ema_decay must be 0"),
        ({"method": "channel", "train": {"steps": 6, "ema_decay": 0.99}}, "train.ema_decay must be 0"),
        ({"train": {"steps": 6, "val_every": 2, "keep_best": True}}, "train.keep_best must be false for pruning"),
        ({"train": {"steps": 6, "keep_best": True}}, "keep_best needs val_every > 0"),
        ({"train": {"steps": 6, "max_minutes": 30}}, "train.max_minutes must be 0 for pruning"),
        ({"method": "channel", "train": {"steps": 6, "warmup_steps": 2}}, "train.warmup_steps must be 0 for channel"),
        ({"method": "channel", "criterion": "lamp"}, "criterion lamp ranks a layer's channels as magnitude does"),
    ],
)
def test_bad_recipe_values(mapping, message):
    with pytest.raises(InputError, match=message):
        from_mapping(PruneRecipe, {**TINY, **mapping})
