import math

import torch

from compress.core.best_weights import BestWeights
from tests.conftest import tiny_edsr


def test_offer_keeps_only_a_strictly_better_check_and_restore_loads_it():
    best, model = BestWeights(), tiny_edsr(2)
    assert best.offer(100, 30.0, model) and best.step == 100
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not best.offer(200, 30.0, model)  # a tie keeps the earlier check
    assert not best.offer(300, math.nan, model)  # a NaN score never wins
    assert not best.offer(400, 29.5, model) and (best.step, best.psnr_y_db) == (100, 30.0)
    best.restore(model)
    for name, w in model.state_dict().items():
        torch.testing.assert_close(w, kept[name])
    assert best.offer(500, 30.5, model) and best.step == 500


def test_the_record_round_trips_and_restoring_nothing_leaves_the_model():
    best, model = BestWeights(), tiny_edsr(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    best.restore(model)  # nothing kept yet
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    best.offer(7, 31.25, model)
    again = BestWeights.from_state(best.state_dict())
    assert (again.step, again.psnr_y_db) == (7, 31.25) and again.weights.keys() == before.keys()
    assert BestWeights.from_state(None) == BestWeights()
