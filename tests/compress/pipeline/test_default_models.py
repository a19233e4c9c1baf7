"""The shipped default weights load through the normal detection path and beat bicubic."""

import pytest

from compress.core.checkpoint import load_checkpoint
from compress.core.data import load_pairs
from compress.core.default_data import split_paths
from compress.core.evaluate import bicubic_upscaler, evaluate
from compress.core.infer import torch_upscaler
from compress.pipeline.defaults import DEFAULT_DIR, DEFAULT_MODELS

SHIPPED = sorted(DEFAULT_DIR.glob("*.safetensors"))


def test_default_x2_is_shipped():
    assert (DEFAULT_DIR / DEFAULT_MODELS[("edsr", 2)]).is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoint_loads_and_beats_bicubic(path):
    loaded = load_checkpoint(path)
    arch = {v: k for k, v in DEFAULT_MODELS.items()}[path.name][0]
    assert loaded.arch == arch
    if arch == "edsr":
        assert loaded.layout == "edsr-basicsr" and loaded.config.num_feat == 64 and loaded.config.num_block == 16
    pair = load_pairs(split_paths("evaluation")[:1], loaded.scale)[0]  # chelsea, never trained on
    model = evaluate(torch_upscaler(loaded.model), [pair], loaded.scale).psnr_y_db
    bicubic = evaluate(bicubic_upscaler(loaded.scale), [pair], loaded.scale).psnr_y_db
    assert model > bicubic + 0.3


def test_unshipped_default_names_what_is_shipped():
    from compress.core.errors import InputError
    from compress.pipeline.defaults import default_checkpoint

    with pytest.raises(InputError, match="no shipped default rrdb model for scale 2; shipped: edsr x2"):
        default_checkpoint(2, "rrdb")


def test_missing_default_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from compress.pipeline import defaults as stages
    from compress.core.errors import InputError

    monkeypatch.setattr(stages, "DEFAULT_DIR", tmp_path)
    with pytest.raises(InputError, match="no shipped rrdb x4 weights here .* make train"):
        stages.default_checkpoint(4, "rrdb")
