import itertools
import threading

import numpy as np
import pytest

from compress.core.data import ImagePair, PatchConfig, random_patches
from compress.core.prefetch import Prefetcher
from compress.core.train import _prefetched


def _pairs() -> list[ImagePair]:
    rng = np.random.default_rng(3)
    return [ImagePair("a", hr=rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
                      lr=rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))]


def test_prefetched_stream_is_the_same_stream_in_the_same_order():
    cfg = PatchConfig(lr_patch=8, batch_size=3, seed=5)
    plain = list(itertools.islice(random_patches(_pairs(), 2, cfg, shard=False), 6))
    with Prefetcher(random_patches(_pairs(), 2, cfg, shard=False), depth=2) as ahead:
        fetched = list(itertools.islice(ahead, 6))
    for (lr_a, hr_a), (lr_b, hr_b) in zip(plain, fetched, strict=True):
        np.testing.assert_array_equal(lr_a, lr_b)
        np.testing.assert_array_equal(hr_a, hr_b)


def test_finite_source_ends_and_errors_arrive_where_they_happened():
    assert list(Prefetcher(iter(range(5)))) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        yield 2
        raise OSError("disk gone")

    ahead = Prefetcher(broken())
    assert [next(ahead), next(ahead)] == [1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)
    # an exception object yielded as an item is an item, not an error
    assert list(Prefetcher(iter([ValueError("x")])))[0].args == ("x",)


def test_close_stops_the_thread_of_an_endless_source():
    drawn = itertools.count()
    ahead = Prefetcher(drawn, depth=3)
    assert next(ahead) == 0
    ahead.close()
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
    assert next(drawn) == 5  # exactly the queue's depth plus one in hand were drawn ahead
    with pytest.raises(StopIteration):
        next(ahead)


@pytest.mark.parametrize("consumed", [0, 1, 4])
def test_the_source_stands_depth_plus_one_past_the_consumer_whatever_the_timing(consumed):
    for _ in range(5):  # the thread may have drawn nothing, a few or all ahead when close comes
        drawn = itertools.count()
        with Prefetcher(drawn, depth=2) as ahead:
            assert list(itertools.islice(ahead, consumed)) == list(range(consumed))
        assert next(drawn) == consumed + 3
    ended = iter(range(2))
    with Prefetcher(ended, depth=2) as ahead:
        assert next(ahead) == 0
    assert next(ended, "end") == "end"  # a finite source is drawn no further than its end


def test_close_from_another_thread_ends_a_waiting_next():
    gate = threading.Event()

    def slow():
        yield 1
        gate.wait(30)  # item 2 comes only once the test opens the gate
        yield 2

    ahead = Prefetcher(slow())
    assert next(ahead) == 1
    closer = threading.Timer(0.2, ahead.close)
    closer.start()
    with pytest.raises(StopIteration):
        next(ahead)  # waits for item 2 until the close ends the wait
    gate.set()
    closer.join(10)
    assert not closer.is_alive()


def test_depth_is_checked():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        Prefetcher(iter(()), depth=0)


def test_prefetch_only_on_cuda():
    stream = iter(range(3))
    with _prefetched(stream, "cpu") as same:
        assert same is stream
    with _prefetched(iter(range(3)), "cuda:0") as ahead:
        assert isinstance(ahead, Prefetcher) and list(ahead) == [0, 1, 2]
