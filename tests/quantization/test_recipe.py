"""Quantize recipes: the shipped ones load; bad values are named with their field."""

import pytest

from compress.core.errors import InputError
from compress.core.recipe import from_mapping, load_recipe
from quantization.recipe import QuantRecipe
from tests.conftest import REPO


def test_shipped_quantize_recipes_load_and_ptq_trains_nothing():
    recipes = {p.stem: load_recipe(QuantRecipe, p) for p in sorted((REPO / "quantization" / "recipes").glob("*.toml"))}
    assert len(recipes) >= 8
    ptq = recipes["ptq"]
    assert not (ptq.qat or ptq.nncf.qat or ptq.tflite_qat.enabled or ptq.mixed_precision) and ptq.nncf.enabled


def test_recipe_validation_and_shipped_recipe():
    default = load_recipe(QuantRecipe, REPO / "quantization" / "recipes" / "default.toml")
    # make all: one QAT, NNCF's or ORT's, from whichever PTQ start scores best on the calibration crops
    assert default.nncf.qat and default.qat and default.qat_from == "best" and default.train.steps == 300
    with pytest.raises(InputError, match=r"ptq_methods must be a non-empty subset"):
        from_mapping(QuantRecipe, {"ptq_methods": ["kl"]})
    with pytest.raises(InputError, match=r"percentile must be in \[90, 100\)"):
        from_mapping(QuantRecipe, {"percentile": 100.0})
    with pytest.raises(InputError, match=r"qat_calibration must be one of"):
        from_mapping(QuantRecipe, {"qat_calibration": "mse"})
    with pytest.raises(InputError, match=r"qat_calibration 'percentile' is not in ptq_methods \['minmax'\]: the PTQ"):
        from_mapping(QuantRecipe, {"ptq_methods": ["minmax"], "qat_calibration": "percentile"})
    assert from_mapping(QuantRecipe, {"ptq_methods": ["minmax"], "qat_calibration": "percentile", "qat": False}).qat is False
    with pytest.raises(InputError, match=r"nncf.activation_ranges must be one of"):
        from_mapping(QuantRecipe, {"nncf": {"activation_ranges": "kl"}})
    with pytest.raises(InputError, match=r"train.feature_distill_weight must be 0 for QAT"):
        from_mapping(QuantRecipe, {"train": {"feature_distill_weight": 0.1}})
    with pytest.raises(InputError, match=r"train.keep_best must be false for QAT"):
        from_mapping(QuantRecipe, {"train": {"val_every": 50, "keep_best": True}})
    with pytest.raises(InputError, match=r"float_op_types: 'Mul' with qat = true"):
        from_mapping(QuantRecipe, {"float_op_types": ["Add", "Mul"]})
    assert from_mapping(QuantRecipe, {"float_op_types": ["Add", "Mul"], "qat": False}).float_op_types == ("Add", "Mul")


def test_a_ptq_method_given_twice_is_refused(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('ptq_methods = ["minmax", "minmax"]\n')
    with pytest.raises(InputError, match=r"ptq_methods must be a non-empty subset of .*each once"):
        load_recipe(QuantRecipe, path)
