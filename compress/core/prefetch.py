"""Draw training batches on a background thread while the accelerator runs the previous step.

On a GPU the patch sampling of :func:`compress.core.data.random_patches` (NumPy slicing, flips, the
uint8 to float conversion) otherwise runs between steps while the GPU waits. One producer thread keeps
the stream's order, so a prefetched run sees exactly the batches, in the same order, as one without.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class _Raised:
    """An error of the source, carried to the consumer (a yielded exception object stays an item)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """An iterator over ``source`` whose next ``depth`` items are drawn ahead on a daemon thread.

    An error raised by ``source`` is raised again by ``next`` at the position where it happened.
    Call :meth:`close` (or use as a context manager) to stop the thread; ``source`` must not be
    used directly while the prefetcher is open. After it closes, ``source`` stands exactly
    ``depth + 1`` items past those consumed (fewer only where it ended), whatever the thread's timing:
    those items were drawn ahead and are dropped, so a caller that goes on drawing from ``source``
    sees the same stream in every run.

    Args:
        source: any iterator (an endless batch stream, typically).
        depth: how many items may wait, drawn ahead (>= 1).
    """

    def __init__(self, source: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"Prefetcher.depth must be >= 1, got {depth}")
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._depth = depth
        self._stop = threading.Event()
        self._finished = False
        self._drawn = 0  # items the thread took from the source (written by the thread only)
        self._taken = 0  # items handed to the consumer
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue ``item``, waiting for room; False once the prefetcher is closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                self._drawn += 1
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Raised(exc))

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        item = _DONE
        while not self._finished:  # a close from another thread ends the wait
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:  # close sets _finished
                continue
        if self._finished:
            raise StopIteration
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.exc
        self._taken += 1
        return item

    def close(self) -> None:
        """Stop the producer thread and leave the source ``depth + 1`` items past those consumed."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._finished = True
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # still inside ``next(source)``: it stops at its next put
            warnings.warn("Prefetcher.close: the source is still drawing an item; do not reuse it yet",
                          RuntimeWarning, stacklevel=2)
            return
        try:  # draw what the thread had not yet drawn ahead, so the drop does not depend on timing
            for _ in range(self._taken + self._depth + 1 - self._drawn):
                next(self._source)
        except Exception:  # the end, or an error, of items that would be dropped unseen
            pass

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
