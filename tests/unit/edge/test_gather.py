"""Leader/follower gathering: batches complete early, a lone request never waits, errors reach all."""

from __future__ import annotations

import threading
import time

import pytest

from edge_server.gather import Gather, RecentPeers, Slots


def _submit_all(gather: Gather, items: list[int], expected: int, delays: list[float]) -> list[list[int]]:
    batches: list[list[int]] = []

    def run(batch: list[int]) -> None:
        batches.append(list(batch))

    def one(item: int, delay: float) -> None:
        time.sleep(delay)
        gather.submit("key", item, expected, run)

    threads = [threading.Thread(target=one, args=(i, d)) for i, d in zip(items, delays, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return batches


def test_expected_arrivals_form_one_batch_and_do_not_wait_out_the_window():
    gather: Gather[int] = Gather(window_seconds=5.0)
    began = time.monotonic()
    batches = _submit_all(gather, [1, 2, 3], expected=3, delays=[0.0, 0.05, 0.1])
    assert [sorted(b) for b in batches] == [[1, 2, 3]]
    assert time.monotonic() - began < 4.0  # released when the third arrived, not after 5 s


def test_a_lone_request_runs_at_once():
    gather: Gather[int] = Gather(window_seconds=5.0)
    began = time.monotonic()
    assert _submit_all(gather, [1], expected=1, delays=[0.0]) == [[1]]
    assert time.monotonic() - began < 1.0


def test_a_missing_peer_costs_at_most_the_window():
    gather: Gather[int] = Gather(window_seconds=0.2)
    batches = _submit_all(gather, [1, 2], expected=3, delays=[0.0, 0.05])
    assert [sorted(b) for b in batches] == [[1, 2]]


def test_late_arrivals_start_the_next_batch():
    gather: Gather[int] = Gather(window_seconds=0.1)
    batches = _submit_all(gather, [1, 2], expected=2, delays=[0.0, 0.5])
    assert batches == [[1], [2]]


def test_an_error_in_the_batch_reaches_every_caller():
    gather: Gather[int] = Gather(window_seconds=1.0)
    errors: list[BaseException] = []

    def run(batch: list[int]) -> None:
        raise ValueError("boom")

    def one(item: int) -> None:
        try:
            gather.submit("key", item, 2, run)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 2


def test_recent_peers_count_distinct_callers_and_forget_them():
    peers = RecentPeers(horizon_seconds=60)
    assert peers.arrive("k", "a") == 1
    assert peers.arrive("k", "b") == 2
    assert peers.arrive("k", "a") == 2
    assert peers.arrive("other", "a") == 1
    peers.forget("b")
    assert peers.arrive("k", "a") == 1


@pytest.mark.parametrize("horizon", [0.05])
def test_recent_peers_age_out(horizon):
    peers = RecentPeers(horizon_seconds=horizon)
    peers.arrive("k", "a")
    time.sleep(horizon * 3)
    assert peers.arrive("k", "b") == 1


def test_batches_never_run_in_more_slots_than_given_and_a_waiting_batch_keeps_gathering():
    slots = Slots(1)
    gather: Gather[int] = Gather(window_seconds=0.01, slots=slots)
    running, most, batches = [0], [0], []
    lock = threading.Lock()

    def run(batch: list[int]) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            batches.append(sorted(batch))
        time.sleep(0.3 if batch == [0] else 0.01)  # the first batch holds the only slot a while
        with lock:
            running[0] -= 1

    def one(key: str, item: int, delay: float) -> None:
        time.sleep(delay)
        gather.submit(key, item, 2, run)

    # Item 0 runs alone in the slot; 1, 2 and 3 arrive (two keys) while it runs: key "a"'s leader's
    # window passes with the slot still busy, so 3 joins its batch instead of starting a new one.
    plan = [("a", 0, 0.0), ("a", 1, 0.05), ("b", 2, 0.06), ("a", 3, 0.15)]
    threads = [threading.Thread(target=one, args=args) for args in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1
    assert batches[0] == [0]
    assert sorted(batches[1:]) == [[1, 3], [2]]
    assert slots.busy == 0


def test_slots_need_at_least_one():
    with pytest.raises(ValueError):
        Slots(0)
