import pytest

from compress.pipeline.bench_stage import BenchConfig
from compress.pipeline.ladder import STEP, climb, first_guess_mp, lr_for_output, next_rung, target_label


def linear(ms_per_mp: float, scale: int, calls: list):
    def time_at(size):
        calls.append(size)
        return 20.0 + ms_per_mp * size[0] * size[1] * scale * scale / 1e6
    return time_at


def test_first_guess_and_sizes():
    assert first_guess_mp([(0.0, 100.0), (1.0, 300.0)], 1000.0) == pytest.approx(4.5)
    assert first_guess_mp([(1.0, 50.0)], 300.0) is None
    h, w = lr_for_output(2.07, 2)  # about the 1080p output at x2
    assert h % 4 == 0 and w % 4 == 0 and abs(h * w * 4 / 1e6 - 2.07) < 0.02 and abs(w / h - 16 / 9) < 0.02
    assert lr_for_output(1e-6, 4) == (32, 56)
    assert [target_label(t) for t in (300.0, 1000.0, 10_000.0)] == ["300ms", "1000ms", "10s"]


def test_next_rung_jumps_by_the_latency_ratio_then_bisects():
    assert next_rung(1.0, 100.0, 300.0, 1.0, None) == pytest.approx(3.0)  # proportional jump up
    assert next_rung(1.0, 290.0, 300.0, 1.0, None) == pytest.approx(STEP)  # at least one STEP
    assert next_rung(1.0, 3000.0, 300.0, None, 1.0) == pytest.approx(0.25)  # at most 4x down
    assert next_rung(2.0, 400.0, 300.0, 1.0, 2.0) == pytest.approx(2 ** 0.5)  # bisect the bracket
    assert next_rung(1.1, 400.0, 300.0, 1.0, 1.1) is None  # within STEP: done


def test_climb_brackets_the_target_from_below_and_from_above():
    calls = []
    up = climb(linear(140.0, 2, calls), start_mp=1.0, target_ms=300.0, scale=2)  # true limit 2.0 MP
    assert up["max_output_mp"] <= 2.0 < up["failing_mp"] and up["failing_mp"] / up["max_output_mp"] < STEP * 1.05
    assert [r["p50_ms"] <= 300.0 for r in up["rungs"]][-1] is False and len(calls) == len(up["rungs"])
    down = climb(linear(140.0, 2, []), start_mp=4.0, target_ms=300.0, scale=2)
    assert down["max_output_mp"] <= 2.0 < down["failing_mp"] and down["rungs"][0]["p50_ms"] > 300.0


def test_climb_reports_failures_and_unreachable_targets():
    failed = climb(lambda size: None, 1.0, 300.0, 2)
    assert failed["max_output_mp"] is None and len(failed["rungs"]) == 1
    never = climb(lambda size: 1e6, 1.0, 300.0, 2)  # even the smallest rung misses the target
    assert never["max_output_mp"] is None and never["failing_mp"] is not None
    always = climb(lambda size: 1.0, 1.0, 300.0, 2)  # jumps 4x a rung up to the top rung, then stops
    assert always["failing_mp"] is None and always["max_output_mp"] == pytest.approx(40.0, rel=0.01)
    assert len(always["rungs"]) == 4
    capped = climb(lambda size: 1.0, 39.0, 300.0, 2)  # stops at the top rung instead of growing without bound
    assert len(capped["rungs"]) == 2 and capped["max_output_mp"] == pytest.approx(40.0, rel=0.01)


def test_ladder_targets_validated():
    with pytest.raises(ValueError, match="ladder_targets_ms must be positive"):
        BenchConfig(ladder_targets_ms=(0.0,))
