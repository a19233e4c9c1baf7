import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from compress.core.cpu import host_cpu
from compress.core.archs import EDSRConfig
from compress.core.errors import InputError
from compress.core.files import write_sidecar
from compress.core.recipe import load_recipe
from compress.core.checkpoint import save_checkpoint
from compress.pipeline.bars import PLANS, Bar, Plan, Step, plan_named
from compress.pipeline.bars_run import (Campaign, Outcome, _stop, dry_run, format_bars, judge, read_outcome,
                                       run_bars)
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
            elif bar.qat:  # the QAT the judged artifact comes from is one the recipe runs
                recipe = load_recipe(QuantRecipe, REPO / step.recipe)
                assert recipe.nncf.qat if bar.artifact.endswith("_nncf_qat.xml") else recipe.qat, bar.key
        if bar.after and bar.steps:  # it quantizes what the earlier bar pruned, in that bar's folder
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
    with pytest.raises(ValueError, match="no steps"):
        Bar("a", "a", 0.1, (), "x")
    with pytest.raises(ValueError, match="not before it"):
        Plan("p", "edsr", 2, (Bar("b", "b", 0.1, (step,), "x", after="a"), Bar("a", "a", 0.1, (step,), "x")))
    with pytest.raises(InputError, match="unknown plan"):
        plan_named("edsr-x8")


PRUNE_BAR = Bar("c30", "channel 30%", 0.05, (Step("prune", "pruning/recipes/quick.toml"),), "x", min_macs_cut=0.29)
QAT_BAR = Bar("qat", "QAT", 0.03, (Step("quantize", "quantization/recipes/quick.toml"),), "x", qat=True)


SETS = ("embedded", "Set5")


@pytest.mark.parametrize(("bar", "outcome", "verdict"), [
    (PRUNE_BAR, Outcome({"embedded": 0.018, "Set5": -0.006}, 0.315), "met"),
    (PRUNE_BAR, Outcome({"embedded": 0.051, "Set5": 0.01}, 0.315), "not met: embedded loses 0.051 dB"),
    (PRUNE_BAR, Outcome({"embedded": 0.01}, 0.315), "not met: Set5 not measured"),
    (PRUNE_BAR, Outcome({"embedded": 0.01, "Set5": 0.0}, 0.25), "not met: MACs cut 25.0% < 29%"),
    (PRUNE_BAR, Outcome({"embedded": 0.01, "Set5": 0.0}, None), "not met: MACs cut unknown < 29%"),
    (QAT_BAR, Outcome({"embedded": -0.05, "Set5": 0.01}, None, {"embedded": 0.02, "Set5": 0.01}), "met"),
    (QAT_BAR, Outcome({"embedded": 0.02, "Set5": 0.012}, None, {"embedded": 0.03, "Set5": 0.01}),
     "not met: Set5 worse than its PTQ start (0.012 > 0.010 dB)"),
    (QAT_BAR, Outcome({"embedded": 0.02, "Set5": 0.01}), "not met: its PTQ start is not known"),
    (QAT_BAR, Outcome(None), "not met: no artifact (the QAT did not beat its PTQ start, or failed)"),
    (PRUNE_BAR, Outcome(None, failed="exit 2: error: x.toml: recipe not found"),
     "not met: failed (exit 2: error: x.toml: recipe not found)"),
])
def test_judge_golden_verdicts(bar, outcome, verdict):
    assert judge(bar, outcome, SETS) == verdict


def test_bars_table_renders_with_one_cell_count():
    plan = Plan("p", "edsr", 2, (PRUNE_BAR, QAT_BAR))
    text = format_bars(plan, {"c30": (Outcome({"embedded": 0.01, "Set5": 0.02}, 0.3), 3.25),
                              "qat": (Outcome(None, failed="exit 2: a | b"), None)}, ["embedded", "Set5"])
    (table,) = markdown_tables(text)
    assert len(table) == 4 and len({cells(line.replace("\\|", "")) for line in table}) == 1
    assert "| 0.010 | 0.020 | -30.0% | 3.2 | met |" in table[2]
    assert table[3].endswith("| - | - | - | - | not met: failed (exit 2: a \\| b) |")


def test_the_bars_page_names_each_host_a_resumed_campaign_ran_on():
    from compress.pipeline.bars_run import hosts_line

    here, there = "AVX2 CPU (avx2)", "AMX CPU (avx2 amx_int8)"
    assert hosts_line({"a": {"cpu": here}, "b": {"cpu": here}}, ["a", "b"], here) == f"Host: {here}"
    assert hosts_line({}, [], here) == f"Host: {here}"
    assert hosts_line({"a": {"cpu": there}, "b": {"cpu": here}, "c": {}}, ["a", "b", "c"], here) == (
        f"Hosts: {there} (a); {here} (b); not recorded (c); this one is {here}")


def test_only_brings_along_the_bar_it_continues_and_refuses_unknown_bars(tmp_path):
    plan = plan_named("edsr-x2")
    campaign = Campaign(plan, tmp_path, only=("channel50_int8",))
    assert [b.key for b in campaign.bars()] == ["channel50", "channel50_int8"]
    lines = dry_run(campaign)
    assert lines[0].startswith("python -m compress model") and "--arch edsr" in lines[0]
    assert all(f"--run {tmp_path / 'channel50'} " in line for line in lines[1:])
    with pytest.raises(InputError, match="no such bar"):
        Campaign(plan, tmp_path, only=("nope",))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="file: not a folder"):
        Campaign(plan, tmp_path / "file")


def test_read_outcome_measures_loss_against_the_dense_baseline_of_the_run(tmp_path):
    cfg = EDSRConfig(scale=2, num_feat=16, num_block=2)
    bar = Bar("c", "c", 0.1, (Step("quantize", "quantization/recipes/quick.toml", "prune/p"),),
              "20-quantize/prune-p/int8.onnx", qat=True)
    assert read_outcome(bar, tmp_path).loss_db is None
    write_sidecar(save_checkpoint(tiny_edsr(2), cfg, tmp_path / "00-model" / "model.safetensors"),
                  {"quality": {"embedded": {"psnr_y_db": 30.0}, "Set5": {"psnr_y_db": 32.0}}})
    artifact = tmp_path / bar.artifact
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"int8")
    (artifact.parent / "start.onnx").write_bytes(b"start")
    write_sidecar(artifact.parent / "start.onnx", {"quality": {"embedded": {"psnr_y_db": 29.9}, "Set5": {"psnr_y_db": 31.95}}})
    # the sidecar's own delta is against the pruned model it came from: not what the bar judges
    write_sidecar(artifact, {"quality": {"embedded": {"psnr_y_db": 29.94}, "Set5": {"psnr_y_db": 32.01}},
                             "psnr_y_delta_db": {"embedded": 0.5, "Set5": 0.5}, "against_ptq_start": {"ptq_start": "start.onnx"}})
    outcome = read_outcome(bar, tmp_path)
    assert outcome.loss_db == {"embedded": 0.06, "Set5": -0.01} and outcome.start_loss_db == {"embedded": 0.1, "Set5": 0.05}
    artifact.with_name("int8.onnx.json").write_text("{not json")
    assert read_outcome(bar, tmp_path).failed.startswith("unreadable sidecar of")


def test_campaign_runs_each_bar_in_its_own_folder_records_failures_and_resumes(tmp_path, image_dir):
    model = save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2), tmp_path / "tiny.safetensors")
    prune = tmp_path / "tinyprune.toml"
    prune.write_text('method = "channel"\nround_to = 4\n[schedule]\ninitial_sparsity = 0.0\nfinal_sparsity = 0.5\n'
                     'begin_step = 0\nend_step = 4\nfrequency = 2\n[patch]\nlr_patch = 16\nbatch_size = 2\n[train]\n'
                     'steps = 6\nlr = 1e-4\n')
    int8 = "20-quantize/prune-tinyprune/model_int8_minmax.onnx"
    plan = Plan("tiny", "edsr", 2, (
        Bar("pruned", "channel 50%", 1.0, (Step("prune", str(prune)),), "10-prune/tinyprune/model.safetensors",
            min_macs_cut=0.45),
        Bar("int8", "channel 50% + INT8", 1.0, (Step("quantize", "quantization/recipes/quick.toml", "prune/tinyprune"),),
            int8, after="pruned"),
        Bar("judged", "the same INT8 model, judged again", 1.0, (), int8, after="int8"),
        Bar("broken", "a recipe that is not there", 1.0, (Step("prune", str(tmp_path / "missing.toml")),), "x"),
        Bar("orphan", "after the broken one", 1.0, (Step("quantize", "quantization/recipes/quick.toml"),), "y",
            after="broken"),
    ))
    out = tmp_path / "bars"
    campaign = Campaign(plan, out, str(model), data=str(image_dir))
    md = run_bars(campaign).read_text()
    state = json.loads((out / "bars.json").read_text())
    verdicts = {k: v["verdict"] for k, v in state["outcomes"].items()}
    assert verdicts["pruned"] == verdicts["int8"] == verdicts["judged"] == "met"
    assert state["outcomes"]["pruned"]["macs_cut"] > 0.45
    assert verdicts["broken"].startswith("not met: failed (exit 2: error: ") and "missing.toml" in verdicts["broken"]
    assert verdicts["orphan"] == "not met: failed (not run: broken failed)"
    assert (out / "pruned" / "20-quantize" / "prune-tinyprune").is_dir()  # continued in its folder
    assert not (out / "int8").exists() and (out / "broken" / "00-model").is_dir()
    assert md.count("\n| ") == 6  # header + five bars
    here = host_cpu().describe()
    assert {r["cpu"] for r in state["records"].values()} == {here} and f"Host: {here}, " in md
    pruned, quantized = out / "pruned" / plan.bars[0].artifact, out / "pruned" / int8
    stamps = pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns
    run_bars(campaign)  # resumed: only the failed bars run again
    assert (pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns) == stamps
    state = json.loads((out / "bars.json").read_text())
    state["records"]["pruned"]["failed"] = "exit 3: interrupted"  # as if the pruning had failed late
    (out / "bars.json").write_text(json.dumps(state))
    run_bars(campaign)  # the pruning runs again, and the quantization of what it pruned with it
    assert pruned.stat().st_mtime_ns != stamps[0] and quantized.stat().st_mtime_ns != stamps[1]
    stamps = pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns
    recipe = tmp_path / "quick_copy.toml"  # the INT8 bar declared with another recipe: it alone runs again
    recipe.write_text((REPO / "quantization/recipes/quick.toml").read_text())
    changed = dataclasses.replace(plan.bars[1], steps=(Step("quantize", str(recipe), "prune/tinyprune"),))
    campaign = Campaign(dataclasses.replace(plan, bars=(plan.bars[0], changed, *plan.bars[2:])), out, str(model),
                        data=str(image_dir))
    run_bars(campaign)
    assert pruned.stat().st_mtime_ns == stamps[0] and quantized.stat().st_mtime_ns != stamps[1]
    assert str(recipe) in " ".join(json.loads((out / "bars.json").read_text())["records"]["int8"]["commands"])
    stamps = pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns
    prune.write_text("# a comment changes no setting\n" + prune.read_text())
    run_bars(campaign)
    assert (pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns) == stamps
    prune.write_text(prune.read_text().replace("steps = 6", "steps = 8"))  # the same command, its recipe edited
    run_bars(campaign)  # the pruning runs again, and the quantization after it
    assert pruned.stat().st_mtime_ns != stamps[0] and quantized.stat().st_mtime_ns != stamps[1]
    digest = json.loads((out / "bars.json").read_text())["records"]["pruned"]["recipes"][str(prune)]
    settings = json.dumps(tomllib.loads(prune.read_text()), sort_keys=True).encode()
    assert digest == hashlib.sha256(settings).hexdigest()
    stamps = pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns
    prune.write_text(prune.read_text().replace("steps = 8", "steps = 6"))
    run_bars(dataclasses.replace(campaign, only=("pruned",)))  # the pruning alone runs again ...
    assert pruned.stat().st_mtime_ns != stamps[0] and quantized.stat().st_mtime_ns == stamps[1]
    assert "int8" not in json.loads((out / "bars.json").read_text())["outcomes"]  # ... so the INT8 bar is stale
    stamps = pruned.stat().st_mtime_ns, quantized.stat().st_mtime_ns
    run_bars(campaign)  # ... and a later invocation runs it on the new pruned model, not the pruning again
    assert pruned.stat().st_mtime_ns == stamps[0] and quantized.stat().st_mtime_ns != stamps[1]
    with pytest.raises(InputError, match="bars.json: written by another campaign .*model"):
        run_bars(Campaign(plan, out, str(tmp_path / "other.safetensors"), data=str(image_dir)))


@pytest.mark.parametrize("child, own_s, code", [
    ("time.sleep(0.3)", 60.0, 0),  # ends on its own (Ctrl-C reached it too): waited for, not signalled
    ("time.sleep(60)", 0.5, -signal.SIGTERM),  # still running: SIGTERM, which the CLI unwinds on
    ("signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)", 0.5, -signal.SIGKILL),
])
def test_an_interrupted_campaign_stops_its_command_in_turn(child, own_s, code):
    proc = subprocess.Popen([sys.executable, "-c", f"import signal, time\n{child}"], stdout=subprocess.PIPE)
    if "SIG_IGN" in child:
        proc.stdout.readline()  # its handler is in place
    _stop(proc, own_s=own_s, grace_s=0.5)
    assert proc.returncode == code
    proc.stdout.close()


def test_sigterm_to_a_campaign_reaches_its_running_command_at_once(tmp_path, monkeypatch, tiny_checkpoints):
    """A campaign's own SIGTERM is passed on without the 10 s a shared Ctrl-C gets: here to a real ``serve``."""
    import os
    import threading
    import time

    import compress.pipeline.bars_run as bars_run
    from compress.core.errors import Terminated
    from compress.pipeline.cli import sigterm_as_interrupt
    from tests.compress.pipeline.conftest import free_port

    log, stops, real_stop = tmp_path / "serve.log", [], bars_run._stop

    def recorded_stop(proc, own_s, **kwargs):
        real_stop(proc, own_s, **kwargs)
        stops.append((own_s, proc.returncode))

    monkeypatch.setattr(bars_run, "_stop", recorded_stop)

    def kill_once_serving():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "serving on" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_once_serving, daemon=True).start()
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        bars_run._compress(["serve", "--artifact", str(tiny_checkpoints[0]), "--port", str(free_port()), "--threads", "1"], log)
    assert stops == [(0.0, 0)]  # SIGTERM at once, and the service shut down cleanly on it
    assert "serving on" in log.read_text() and "Traceback" not in log.read_text()


def test_a_bar_whose_recipe_chooses_its_artifact_judges_the_one_written(tmp_path):
    """make all's QAT is NNCF's or ORT's, whichever start ``qat_from = "best"`` chose: the one present is judged."""
    bar = next(b for b in plan_named("rrdb-x4").bars if b.key == "default_quantize")
    assert bar.artifact.endswith("model_int8_nncf_qat.xml") and bar.or_else[0].endswith("model_int8_qat.onnx")
    write_sidecar(save_checkpoint(tiny_edsr(2), EDSRConfig(scale=2, num_feat=16, num_block=2),
                                  tmp_path / "00-model" / "model.safetensors"), {"quality": {"Set5": {"psnr_y_db": 32.0}}})
    assert read_outcome(bar, tmp_path) == Outcome(None)  # neither written: the QAT was not kept
    ort = tmp_path / bar.or_else[0]
    ort.parent.mkdir(parents=True)
    ort.write_bytes(b"int8")
    write_sidecar(ort, {"quality": {"Set5": {"psnr_y_db": 31.98}}})
    outcome = read_outcome(bar, tmp_path)
    assert outcome.artifact == bar.or_else[0] and outcome.loss_db == {"Set5": 0.02}
    assert f"`{bar.or_else[0]}`" in format_bars(plan_named("rrdb-x4"), {bar.key: (outcome, 1.0)}, ["Set5"])
