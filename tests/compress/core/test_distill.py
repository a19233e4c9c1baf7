import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from compress.core.data import PatchConfig, list_images, load_pairs, random_patches
from compress.core.distill import FeatureDistiller, least_squares_adapter, tap_names
from compress.core.train import fit
from compress.core.train_config import TrainConfig
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn


def test_taps_are_the_trunk_blocks():
    assert tap_names(tiny_edsr(2)) == ["body.0", "body.1"]
    assert tap_names(tiny_rrdb(4)) == ["body.0", "body.1"]
    assert tap_names(tiny_srcnn(3)) == ["conv1", "conv2"]


def test_least_squares_adapter_recovers_a_linear_map():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 6, 7)
    weight, bias = torch.randn(8, 5, 1, 1), torch.randn(8)
    teacher = torch.nn.functional.conv2d(student, weight, bias)
    conv = least_squares_adapter(student, teacher)
    torch.testing.assert_close(conv.weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv.bias, bias, atol=1e-4, rtol=1e-4)


def _pruned(model: torch.nn.Module, ratio: float) -> torch.nn.Module:
    student = copy.deepcopy(model)
    tp.pruner.MagnitudePruner(student, torch.rand(1, 3, 16, 16), importance=tp.importance.GroupMagnitudeImportance(),
                              pruning_ratio=ratio, ignored_layers=[student.conv_last, *student.upsample[::2]]).step()
    return student


def test_identical_models_have_zero_feature_loss():
    teacher = tiny_edsr(2)
    student = copy.deepcopy(teacher)
    distiller = FeatureDistiller(student, teacher)
    x = torch.rand(2, 3, 12, 12)
    with distiller.capturing():
        student(x)
        teacher(x)
    assert distiller.loss().item() == 0.0
    assert not distiller.adapters  # equal widths: compared directly


def test_forward_outside_capturing_is_not_kept():
    teacher = tiny_edsr(2)
    distiller = FeatureDistiller(copy.deepcopy(teacher), teacher)
    teacher(torch.rand(1, 3, 8, 8))
    assert not distiller._teacher  # validation passes leave nothing behind


def test_pruned_student_gets_adapters_fitted_to_the_teacher():
    teacher = tiny_edsr(2)
    student = _pruned(teacher, 0.5)
    assert student.body[0].conv2.out_channels < teacher.body[0].conv2.out_channels
    distiller = FeatureDistiller(student, teacher)
    x = torch.rand(4, 3, 12, 12)
    distiller.fit_adapters(x)
    assert set(distiller.adapters) == {"0", "1"}
    with distiller.capturing():
        student(x)
        teacher(x)
    fitted = distiller.loss().item()
    distiller.adapters["0"].weight.data.zero_()
    distiller.adapters["1"].weight.data.zero_()
    with distiller.capturing():
        student(x)
        teacher(x)
    assert fitted < distiller.loss().item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_feature_distillation_pulls_the_trunk_towards_the_teacher(image_dir, precision):
    pairs = load_pairs(list_images(image_dir), 2)
    teacher = tiny_edsr(2, seed=5)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.ascontiguousarray(pairs[0].lr.transpose(2, 0, 1)[None, :, :24, :24]))

    def trunk_gap(weight: float) -> float:
        student = tiny_edsr(2, seed=6)
        fit(student, random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=4, seed=1)),
            TrainConfig(steps=40, lr=1e-3, feature_distill_weight=weight, distill_weight=0.5, precision=precision),
            2, teacher=teacher)
        assert not student.body[0]._forward_hooks  # hooks removed after training
        with torch.no_grad():
            return float((student.body(student.conv_first(x)) - teacher.body(teacher.conv_first(x))).abs().mean())

    with_features, output_only = trunk_gap(1.0), trunk_gap(0.0)
    assert with_features < 0.7 * output_only  # same steps, output distillation only


def test_feature_distillation_needs_a_teacher(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    with pytest.raises(ValueError, match="teacher"):
        fit(tiny_edsr(2), random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=2)),
            TrainConfig(steps=1, feature_distill_weight=0.5), 2)
    with pytest.raises(ValueError, match="feature_distill_weight"):
        TrainConfig(feature_distill_weight=-1.0)
