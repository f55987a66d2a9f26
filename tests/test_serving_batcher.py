"""The dynamic batcher on its own: merging, the max batch size, model failures, no delay for a lone request."""
from __future__ import annotations

import time

import numpy as np


def _run_batcher(max_batch_size: int, delay_s: float, sizes: list[int], fail: bool = False
                 ) -> tuple[list[int], list[object]]:
    """Submit requests of ``sizes`` rows concurrently (each announced first); the rows of every model run."""
    import asyncio

    from serving.batcher import DynamicBatcher

    runs: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        if fail:
            raise ValueError("model exploded")
        runs.append(len(inputs["x"]))
        return inputs["x"][:, 0] * 2.0

    async def main() -> list[object]:
        batcher = DynamicBatcher(run, max_batch_size, delay_s)
        batcher.start()

        async def one(i: int, n: int) -> object:
            with batcher.announce():
                await asyncio.sleep(0.001 * (i % 3))
                try:
                    return await batcher.submit({"x": np.full((n, 1), float(i), np.float32)})
                except ValueError as exc:
                    return exc

        try:
            return list(await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes))))
        finally:
            await batcher.stop()

    return runs, asyncio.run(main())


def test_batcher_merges_concurrent_requests_and_splits_answers() -> None:
    sizes = [1, 2, 3, 1, 2, 3, 1, 2]
    runs, answers = _run_batcher(max_batch_size=100, delay_s=0.05, sizes=sizes)
    assert sum(runs) == sum(sizes) and len(runs) < len(sizes)
    for i, (n, answer) in enumerate(zip(sizes, answers)):
        np.testing.assert_array_equal(answer, np.full(n, 2.0 * i, np.float32))


def test_batcher_respects_max_batch_size() -> None:
    runs, answers = _run_batcher(max_batch_size=4, delay_s=0.05, sizes=[3, 3, 3, 10, 1])
    assert sum(runs) == 20 and 10 in runs
    assert all(r <= 4 for r in runs if r != 10)
    np.testing.assert_array_equal(answers[3], np.full(10, 6.0, np.float32))


def test_batcher_hands_model_failures_to_every_request() -> None:
    _, answers = _run_batcher(max_batch_size=100, delay_s=0.01, sizes=[1, 2, 3], fail=True)
    assert all(isinstance(a, ValueError) and str(a) == "model exploded" for a in answers)


def test_lone_request_is_not_delayed() -> None:
    start = time.perf_counter()
    runs, _ = _run_batcher(max_batch_size=100, delay_s=5.0, sizes=[1])
    assert runs == [1]
    assert time.perf_counter() - start < 2.0


def test_split_requests_let_small_ones_through_between_slices() -> None:
    """With split_rows, a 20-row request runs in slices of at most 4 rows; two 1-row requests sent just after
    it are answered before its last slice, and every answer is whole and in order."""
    import asyncio

    from serving.batcher import DynamicBatcher

    runs: list[int] = []
    finished: list[str] = []

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        runs.append(len(inputs["x"]))
        time.sleep(0.01)
        return inputs["x"][:, 0] * 2.0

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(run, max_batch_size=5, max_queue_delay_s=0.0, split_rows=4)
        batcher.start()

        async def one(name: str, x: np.ndarray, delay: float) -> np.ndarray:
            await asyncio.sleep(delay)
            with batcher.announce():
                scores = await batcher.submit({"x": x})
            finished.append(name)
            return scores

        try:
            return list(await asyncio.gather(one("big", np.arange(20, dtype=np.float32)[:, None], 0.0),
                                             one("a", np.full((1, 1), 100.0, np.float32), 0.005),
                                             one("b", np.full((1, 1), 200.0, np.float32), 0.005)))
        finally:
            await batcher.stop()

    big, a, b = asyncio.run(main())
    np.testing.assert_array_equal(big, np.arange(20, dtype=np.float32) * 2.0)
    np.testing.assert_array_equal(a, [200.0])
    np.testing.assert_array_equal(b, [400.0])
    assert sum(runs) == 22 and max(runs) <= 5
    assert finished.index("a") < finished.index("big") and finished.index("b") < finished.index("big")


def test_slices_shrink_to_the_time_budget_of_a_run() -> None:
    from serving.batcher import MIN_SLICE_ROWS, SLICE_BUDGET_S, DynamicBatcher

    batcher = DynamicBatcher(lambda inputs: inputs["x"][:, 0], max_batch_size=16384, max_queue_delay_s=0.0,
                             split_rows=4096)
    assert batcher.slice_rows() == 4096  # nothing measured yet
    batcher.cost.per_row = SLICE_BUDGET_S / 1000  # about 1,000 jets fill the budget
    assert batcher.slice_rows() in (999, 1000)
    batcher.cost.per_row = SLICE_BUDGET_S / 10  # a very slow model: never below the floor
    assert batcher.slice_rows() == MIN_SLICE_ROWS
    batcher.cost.per_row = SLICE_BUDGET_S / 1e6  # a fast one: never above split_rows
    assert batcher.slice_rows() == 4096
