import json
from pathlib import Path

import pytest

from compress.core.archs import EDSRConfig
from compress.core.errors import InputError
from compress.core.files import write_sidecar
from compress.core.recipe import load_recipe
from compress.core.checkpoint import save_checkpoint
from compress.pipeline.bars import PLANS, Bar, Campaign, Outcome, Plan, Step, dry_run, format_bars, judge, plan_named, \
    read_outcome, run_bars
from pruning.recipe import PruneRecipe
from quantization.recipe import QuantRecipe
from tests.compress.pipeline.test_report import cells, markdown_tables
from tests.conftest import REPO, tiny_edsr


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_plan_names_recipes_that_load_and_artifacts_they_write(plan):
    for bar in plan.bars:
        for step in bar.steps:
            cls = PruneRecipe if step.stage == "prune" else QuantRecipe
            load_recipe(cls, REPO / step.recipe)
            if step.stage == "prune":
                assert bar.artifact == f"10-prune/{Path(step.recipe).stem}/model.safetensors"
        if bar.after:  # it quantizes what the earlier bar pruned, in that bar's folder
            earlier = plan_named(plan.name).bars[[b.key for b in plan.bars].index(bar.after)]
            assert bar.steps[0].source == f"prune/{Path(earlier.steps[0].recipe).stem}"
            assert bar.artifact.startswith(f"20-quantize/prune-{Path(earlier.steps[0].recipe).stem}/")


def test_declarations_refuse_what_cannot_run():
    step = Step("prune", "pruning/recipes/quick.toml")
    with pytest.raises(ValueError, match="stage"):
        Step("export", "x.toml")
    with pytest.raises(ValueError, match="source"):
        Step("prune", "x.toml", source="prune/a")
    with pytest.raises(ValueError, match="max_loss_db"):
        Bar("a", "a", 0.0, (step,), "x")
    with pytest.raises(ValueError, match="key"):
        Bar("base", "a", 0.1, (step,), "x")
    with pytest.raises(ValueError, match="not before it"):
        Plan("p", "edsr", 2, (Bar("b", "b", 0.1, (step,), "x", after="a"), Bar("a", "a", 0.1, (step,), "x")))
    with pytest.raises(InputError, match="unknown plan"):
        plan_named("edsr-x8")


PRUNE_BAR = Bar("c30", "channel 30%", 0.05, (Step("prune", "pruning/recipes/quick.toml"),), "x", min_macs_cut=0.29)
QAT_BAR = Bar("qat", "QAT", 0.03, (Step("quantize", "quantization/recipes/quick.toml"),), "x", qat=True)


@pytest.mark.parametrize(("bar", "outcome", "verdict"), [
    (PRUNE_BAR, Outcome({"embedded": 0.018, "Set5": -0.006}, 0.315), "met"),
    (PRUNE_BAR, Outcome({"embedded": 0.051, "Set5": 0.01}, 0.315), "not met: embedded loses 0.051 dB"),
    (PRUNE_BAR, Outcome({"embedded": 0.01}, 0.25), "not met: MACs cut 25.0% < 29%"),
    (PRUNE_BAR, Outcome({"embedded": 0.01}, None), "not met: MACs cut unknown < 29%"),
    (QAT_BAR, Outcome({"embedded": -0.05}, None, {"kept": True}), "met"),
    (QAT_BAR, Outcome({"embedded": 0.02}, None, {"kept": False}), "not met: worse than its PTQ start"),
    (QAT_BAR, Outcome(None), "not met: no artifact (the QAT did not beat its PTQ start, or failed)"),
    (PRUNE_BAR, Outcome(None, failed="exit 2: error: x.toml: recipe not found"),
     "not met: failed (exit 2: error: x.toml: recipe not found)"),
])
def test_judge_golden_verdicts(bar, outcome, verdict):
    assert judge(bar, outcome) == verdict


def test_bars_table_renders_with_one_cell_count():
    plan = Plan("p", "edsr", 2, (PRUNE_BAR, QAT_BAR))
    text = format_bars(plan, {"c30": (Outcome({"embedded": 0.01, "Set5": 0.02}, 0.3), 3.25),
                              "qat": (Outcome(None), None)}, ["embedded", "Set5"])
    (table,) = markdown_tables(text)
    assert len(table) == 4 and len({cells(line) for line in table}) == 1
    assert "| 0.010 | 0.020 | -30.0% | 3.2 | met |" in table[2]
    assert table[3].endswith("| - | - | - | - | not met: no artifact (the QAT did not beat its PTQ start, or failed) |")


def test_only_brings_along_the_bar_it_continues_and_refuses_unknown_bars(tmp_path):
    plan = plan_named("edsr-x2")
    campaign = Campaign(plan, tmp_path, only=("channel50_int8",))
    assert [b.key for b in campaign.bars()] == ["channel50", "channel50_int8"]
    lines = dry_run(campaign)
    assert lines[0].startswith("python -m compress model") and "--arch edsr" in lines[0]
    assert all(f"--run {tmp_path / 'channel50'} " in line for line in lines[1:])
    with pytest.raises(InputError, match="no such bar"):
        Campaign(plan, tmp_path, only=("nope",))


def test_read_outcome_turns_the_sidecar_gain_into_dB_lost(tmp_path):
    bar = Bar("c", "c", 0.1, (Step("prune", "pruning/recipes/quick.toml"),), "10-prune/quick/model.safetensors")
    assert read_outcome(bar, tmp_path).loss_db is None
    model = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), tmp_path / bar.artifact)
    write_sidecar(model, {"psnr_y_delta_db": {"embedded": -0.0123, "Set5": 0.004}, "macs_256x256": 60,
                          "macs_256x256_before": 100})
    outcome = read_outcome(bar, tmp_path)
    assert outcome.loss_db == {"embedded": 0.0123, "Set5": -0.004} and outcome.macs_cut == pytest.approx(0.4)


def test_campaign_runs_each_bar_in_its_own_folder_records_failures_and_resumes(tmp_path, image_dir):
    model = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), tmp_path / "tiny.safetensors")
    prune = tmp_path / "tinyprune.toml"
    prune.write_text('method = "channel"\nround_to = 4\n[schedule]\ninitial_sparsity = 0.0\nfinal_sparsity = 0.5\nbegin_step = 0\nend_step = 4\nfrequency = 2\n'
                     '[patch]\nlr_patch = 16\nbatch_size = 2\n[train]\nsteps = 6\nlr = 1e-4\n')
    plan = Plan("tiny", "edsr", 2, (
        Bar("pruned", "channel 50%", 1.0, (Step("prune", str(prune)),), "10-prune/tinyprune/model.safetensors",
            min_macs_cut=0.45),
        Bar("int8", "channel 50% + INT8", 1.0, (Step("quantize", "quantization/recipes/quick.toml", "prune/tinyprune"),),
            "20-quantize/prune-tinyprune/model_int8_minmax.onnx", after="pruned"),
        Bar("broken", "a recipe that is not there", 1.0, (Step("prune", str(tmp_path / "missing.toml")),), "x"),
    ))
    campaign = Campaign(plan, tmp_path / "bars", str(model), data=str(image_dir))
    md = run_bars(campaign).read_text()
    state = json.loads((tmp_path / "bars" / "bars.json").read_text())
    assert state["outcomes"]["pruned"]["verdict"] == "met" and state["outcomes"]["int8"]["verdict"] == "met"
    assert state["outcomes"]["pruned"]["macs_cut"] > 0.45
    assert "missing.toml" in state["records"]["broken"]["failed"] and state["records"]["broken"]["failed"].startswith("exit 2")
    assert state["outcomes"]["broken"]["verdict"].startswith("not met: failed (exit 2: error: ")
    assert (tmp_path / "bars" / "pruned" / "20-quantize" / "prune-tinyprune").is_dir()  # continued in its folder
    assert not (tmp_path / "bars" / "int8").exists() and (tmp_path / "bars" / "broken" / "00-model").is_dir()
    assert md.count("\n| ") == 4  # header + three bars
    artifact = tmp_path / "bars" / "pruned" / plan.bars[0].artifact
    stamp = artifact.stat().st_mtime_ns
    prune.write_text(prune.read_text())  # unchanged; a resumed campaign reruns only the failed bar
    run_bars(campaign)
    assert artifact.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "bars" / "bars.json").read_text())["records"]["broken"]["failed"]
