from compress.core.progress import PlainProgress


def test_plain_progress_prints_at_most_once_per_interval():
    progress = PlainProgress("prune", total=1000, start_step=100, interval_s=60.0)
    t0 = progress._t0
    assert progress.line(150, 0.05, 1e-4, now_s=t0 + 30.0) is None
    assert progress.line(200, 0.04321, 2.5e-4, now_s=t0 + 60.0) == (
        "[prune] step 200/1000: loss 0.0432, lr 2.50e-04, 0.60 s/step, 1.0 min")
    assert progress.line(250, 0.04, 1e-4, now_s=t0 + 100.0) is None
    assert progress.line(300, 0.04, 1e-4, now_s=t0 + 120.0) is not None
