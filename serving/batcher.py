"""Dynamic batching: concurrent requests are merged into one ``session.run`` and the scores split back.

One worker task owns the model. It takes the oldest request, adds whatever else is already queued (up to
``max_batch_size`` jets), and waits up to ``max_queue_delay`` only while other requests have announced
themselves but are still being read or parsed, so a lone request is never delayed. The run happens in a
one-thread executor so the event loop keeps accepting requests meanwhile; those form the next batch. When
no other request is in flight, a run expected (from the times of earlier runs) to take under
``INLINE_BUDGET_S`` runs on the loop directly: with nothing to overlap, the thread hand-off (the two threads
trade the GIL) costs more than it saves.

With ``split_rows`` set, a request of more rows is scored in slices of at most that many (fewer when the
measured cost per jet says a slice would run longer than ``SLICE_BUDGET_S``), and each run takes the whole
requests waiting first and fills the rest with one slice of the big ones: a small request waits for at most one
slice, never for a whole 100,000-jet request (head-of-line blocking).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np

RunFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]
BatchObserver = Callable[[int, int, float], None]
# Runs predicted to be shorter than this block the event loop for at most that long instead of paying for the
# thread hand-off; batches up to SMALL_ROWS jets measure the fixed cost of a run, larger ones the cost per jet.
INLINE_BUDGET_S = 1e-3
SMALL_ROWS = 16
# Slices of big requests aim at runs this long, and are never cut below MIN_SLICE_ROWS jets.
SLICE_BUDGET_S = 0.01
MIN_SLICE_ROWS = 256


class RunCost:
    """Running estimate of one model run's duration as ``fixed + per_row * rows`` from timed runs."""

    def __init__(self) -> None:
        self.fixed: float | None = None
        self.per_row: float | None = None

    def predict(self, rows: int) -> float | None:
        if self.fixed is None or (rows > SMALL_ROWS and self.per_row is None):
            return None
        return self.fixed + (self.per_row or 0.0) * rows

    def update(self, rows: int, seconds: float) -> None:
        if rows <= SMALL_ROWS:
            self.fixed = seconds if self.fixed is None else 0.8 * self.fixed + 0.2 * seconds
        else:
            per_row = max(seconds - (self.fixed or 0.0), 0.0) / rows
            self.per_row = per_row if self.per_row is None else 0.8 * self.per_row + 0.2 * per_row


class BatcherStopped(Exception):
    """The server is shutting down; the request was not scored."""


@dataclasses.dataclass
class _Item:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future[np.ndarray]
    taken: int = 0  # rows already handed to runs (slices of a split request)
    parts: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Slice:
    item: _Item
    start: int
    stop: int


class DynamicBatcher:
    """Merges concurrent scoring requests; ``observe(jets, requests, seconds)`` is told about every run."""

    def __init__(self, run: RunFn, max_batch_size: int, max_queue_delay_s: float,
                 observe: BatchObserver | None = None, split_rows: int | None = None) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.split_rows = split_rows
        self._observe = observe
        self._items: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._announced = 0
        self._active = 0
        self.pending_rows = 0  # rows submitted and not yet scored (queued or running)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self.cost = RunCost()

    @property
    def queued(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wtag-ort")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="wtag-batcher")

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStopped("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Mark a request that will submit soon, so a forming batch may wait (briefly) for it."""
        self._announced += 1
        self._active += 1
        try:
            yield
        finally:
            self._announced -= 1
            self._active -= 1

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores for validated inputs, computed in whichever batch the request lands in."""
        if not self.running:
            raise BatcherStopped("the batching worker is not running")
        rows = len(next(iter(inputs.values())))
        item = _Item(inputs, rows, asyncio.get_running_loop().create_future())
        self._items.append(item)
        self.pending_rows += rows
        self._arrived.set()
        # Submitting ends this request's announcement early: the worker must not wait for it any more.
        self._announced -= 1
        try:
            return await item.future
        finally:
            self._announced += 1
            self.pending_rows -= rows

    def _split(self, item: _Item) -> bool:
        return self.split_rows is not None and item.rows > self.split_rows

    async def _next_item(self, timeout: float | None) -> _Item | None:
        """The oldest live item; wait up to ``timeout`` seconds for one (forever when None)."""
        while True:
            while self._items:
                item = self._items.popleft()
                if not item.future.done():
                    return item
            self._arrived.clear()
            if timeout is None:
                await self._arrived.wait()
                continue
            if timeout <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry if carry is not None and not carry.future.done() else await self._next_item(None)
            carry = None
            assert first is not None
            batch: list[_Slice] = []
            big: list[_Item] = []  # split requests met while forming: they fill what whole requests leave
            rows = self._add(first, batch, big, 0)
            deadline = loop.time() + self.max_queue_delay_s
            while rows < self.max_batch_size:
                waiting_for_others = self._announced > 0
                timeout = max(0.0, deadline - loop.time()) if waiting_for_others else 0.0
                item = await self._next_item(timeout)
                if item is None:
                    break
                if not self._split(item) and rows + item.rows > self.max_batch_size:
                    carry = item
                    break
                rows = self._add(item, batch, big, rows)
            slice_left = self.slice_rows()  # big requests share one slice per run, so runs stay short
            for item in big:
                room = min(self.max_batch_size - rows, slice_left)
                if room > 0 and item.taken < item.rows:
                    before = rows
                    rows = self._take(item, batch, rows, room)
                    slice_left -= rows - before
                if item.taken < item.rows:
                    self._items.append(item)  # its next slice after the requests queued behind it
            if batch:
                await self._run_batch(batch, rows)

    def _add(self, item: _Item, batch: list[_Slice], big: list[_Item], rows: int) -> int:
        """Add a whole request to the batch, or set a split one aside; the batch's rows after."""
        if self._split(item):
            big.append(item)
            return rows
        return self._take(item, batch, rows, item.rows)

    def slice_rows(self) -> int:
        """Rows of big requests per run: ``split_rows``, or fewer when the measured cost per jet says a run of
        that many would take longer than SLICE_BUDGET_S (a small request waits for at most one such run)."""
        rows = self.split_rows or self.max_batch_size
        if self.cost.per_row:
            rows = min(rows, max(MIN_SLICE_ROWS, int(SLICE_BUDGET_S / self.cost.per_row)))
        return rows

    def _take(self, item: _Item, batch: list[_Slice], rows: int, room: int) -> int:
        size = min(item.rows - item.taken, room, self.split_rows if self._split(item) else item.rows)
        batch.append(_Slice(item, item.taken, item.taken + size))
        item.taken += size
        return rows + size

    def _timed_run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """The run and its own duration (timed where it runs, so hand-off delays do not count)."""
        start = time.perf_counter()
        scores = self._run(inputs)
        return scores, time.perf_counter() - start

    async def _run_batch(self, batch: list[_Slice], rows: int) -> None:
        loop = asyncio.get_running_loop()
        whole = [s for s in batch if s.start == 0 and s.stop == s.item.rows]
        if len(batch) == 1 and whole:
            merged = batch[0].item.inputs
        else:
            merged = {name: np.concatenate([s.item.inputs[name][s.start:s.stop] for s in batch])
                      for name in batch[0].item.inputs}
        predicted = self.cost.predict(rows)
        alone = self._active <= len(batch)
        try:
            if alone and predicted is not None and predicted < INLINE_BUDGET_S:
                scores, seconds = self._timed_run(merged)
            else:
                scores, seconds = await loop.run_in_executor(self._executor, self._timed_run, merged)
        except Exception as exc:  # hand the model's failure to every waiting request
            for s in batch:
                if not s.item.future.done():
                    s.item.future.set_exception(exc)
            return
        self.cost.update(rows, seconds)
        if self._observe is not None:
            self._observe(rows, len(batch), seconds)
        offset = 0
        for s in batch:
            part = scores[offset:offset + s.stop - s.start]
            offset += s.stop - s.start
            if s.item.future.done():
                continue
            if s.start == 0 and s.stop == s.item.rows:
                s.item.future.set_result(part)
                continue
            s.item.parts.append(part)
            if s.stop == s.item.rows:
                s.item.future.set_result(np.concatenate(s.item.parts))
