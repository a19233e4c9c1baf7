import pytest

from compress.core.errors import InputError
from pruning.schedule import PolynomialDecay


def test_tfmot_golden_values():
    sched = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=110, power=3, frequency=2)
    assert [round(sched(s), 4) for s in (100, 102, 105, 110)] == [0.2, 0.4928, 0.725, 0.8]
    assert sched(50) == pytest.approx(0.2) and sched(500) == pytest.approx(0.8)


def test_agp_equation_of_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0, s_f=0.9, t0=10, n=4, dt=5
    sched = PolynomialDecay(0.0, 0.9, begin_step=10, end_step=30, frequency=5)
    for t in range(10, 31, 5):
        assert sched(t) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - (t - 10) / 20) ** 3)


def test_pruning_steps_include_end():
    sched = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=4)
    assert sched.pruning_steps() == [0, 4, 8, 10]
    assert [s for s in range(0, 20) if sched.should_prune(s)] == [0, 4, 8, 10]


def test_config_round_trip():
    sched = PolynomialDecay(0.1, 0.7, begin_step=3, end_step=90, power=2, frequency=7)
    assert PolynomialDecay.from_config(sched.get_config()) == sched
    with pytest.raises(InputError, match=r"schedule: unknown field\(s\) \['final_sparsty'\]"):
        PolynomialDecay.from_config({**sched.get_config(), "final_sparsty": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\), got 1.0"),
        ({"initial_sparsity": 0.6}, r"final_sparsity \(0.5\) must be >= initial_sparsity \(0.6\)"),
        ({"end_step": 5, "begin_step": 9}, r"end_step \(5\) must be >= begin_step \(9\)"),
        ({"frequency": 0}, "frequency must be >= 1, got 0"),
    ],
)
def test_validation_names_field_and_value(kwargs, message):
    args = {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        PolynomialDecay(**args)
