import pytest
import torch

from compress.core.ema import WeightAverage


def test_average_golden_values():
    w = torch.zeros(2)
    ema = WeightAverage([w], decay=0.5)
    w.fill_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 0.5))
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 0.75))  # the start still weighs 0.5 ** 2


def test_applied_swaps_the_average_in_and_back():
    w = torch.nn.Parameter(torch.zeros(3))
    ema = WeightAverage([w], decay=0.9)
    with torch.no_grad():
        w.fill_(1.0)
    ema.update()
    with ema.applied():
        torch.testing.assert_close(w.detach(), torch.full((3,), 0.1))
    torch.testing.assert_close(w.detach(), torch.ones(3))
    ema.copy_to_params()
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.1))


def test_state_round_trip_and_mismatch():
    a = WeightAverage([torch.ones(2, 2)], decay=0.9)
    b = WeightAverage([torch.zeros(2, 2)], decay=0.9)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.shadow[0], torch.ones(2, 2))
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage([torch.zeros(3)], decay=0.9).load_state_dict(a.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_decay_validation(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([torch.zeros(1)], decay=decay)
