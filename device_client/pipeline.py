"""Micro-batch pipelining: the device computes micro-batch i+1's first blocks while the edge works
on micro-batch i.

A step's batch is cut into micro-batches along dim 0; each one's loss is scaled by its share of the
samples and back-propagated, so gradients accumulate as in one batch of per-sample-mean loss.
Pipelined, each micro-batch runs in a thread of its own: thread i+1 starts as soon as thread i's
activations are on their way to the edge (the session stream keeps both in flight), and the
backwards run strictly in micro-batch order. Forwards reach the edge in order and backwards run
in order on both sides, so gradients are summed in the same order as without pipelining and the
result is the same to the bit (with dropout on the DEVICE, its masks are drawn from torch's global
RNG by interleaved threads, so they differ; the edge's dropout follows its own per-session RNG).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from splitft.errors import InvalidArgument

if TYPE_CHECKING:
    from device_client.model import SplitModel

LossFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` slices of every tensor along dim 0 (sizes differ by at most one); other values are shared."""
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise InvalidArgument(f"every batch tensor must share its first dimension, got sizes {sorted(sizes)}")
    (rows,) = sizes
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= rows:
        raise InvalidArgument(
            f"micro_batches must be an integer in [1, {rows}] (the batch size), got {parts!r}"
        )
    slices: list[dict[str, Any]] = [{} for _ in range(parts)]
    for key, value in batch.items():
        pieces = (
            torch.tensor_split(value, parts) if isinstance(value, torch.Tensor) and value.dim() > 0 else None
        )
        for i in range(parts):
            slices[i][key] = pieces[i] if pieces is not None else value
    return slices


def _rows(batch: Mapping[str, Any]) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


def _loss(model: SplitModel, batch: dict[str, Any], loss_fn: LossFn | None) -> torch.Tensor:
    outputs = model(**batch)
    loss = getattr(outputs, "loss", None) if loss_fn is None else loss_fn(outputs, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InvalidArgument("need a scalar loss: pass labels in the batch or a loss_fn(outputs, batch)")
    return loss


def forward_backward(
    model: SplitModel,
    batch: Mapping[str, Any],
    *,
    micro_batches: int,
    pipeline: bool,
    loss_fn: LossFn | None,
) -> float:
    """Forward and backward of `batch` in micro-batches; returns the weighted mean loss."""
    slices = split_batch(batch, micro_batches)
    total = _rows(batch)
    weights = [_rows(s) / total for s in slices]
    if not pipeline or len(slices) == 1:
        value = 0.0
        for piece, weight in zip(slices, weights, strict=True):
            loss = _loss(model, piece, loss_fn)
            (loss * weight).backward()
            value += float(loss.detach()) * weight
        return value
    return _pipelined(model, slices, weights, loss_fn)


class _Turns:
    """Backwards in micro-batch order: turn i waits until turns 0..i-1 are over."""

    def __init__(self) -> None:
        self._next = 0
        self._cond = threading.Condition()

    def wait(self, turn: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._next == turn)

    def done(self, turn: int) -> None:
        with self._cond:
            self._next = turn + 1
            self._cond.notify_all()


def _pipelined(
    model: SplitModel, slices: list[dict[str, Any]], weights: list[float], loss_fn: LossFn | None
) -> float:
    count = len(slices)
    submitted = [threading.Event() for _ in range(count)]
    losses: list[float] = [0.0] * count
    errors: list[BaseException | None] = [None] * count
    turns = _Turns()
    grad_enabled = torch.is_grad_enabled()

    def run(i: int) -> None:
        loss: torch.Tensor | None = None
        with torch.set_grad_enabled(grad_enabled):
            try:
                with model.forward_context.pipelined(submitted[i].set):
                    loss = _loss(model, slices[i], loss_fn)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                errors[i] = exc
            finally:
                submitted[i].set()  # a forward that failed before the trunk must not stall i+1
            turns.wait(i)  # every thread takes its turn, failed or not, so no later turn waits forever
            try:
                if loss is not None and all(e is None for e in errors[:i]):
                    (loss * weights[i]).backward()
                    losses[i] = float(loss.detach()) * weights[i]
            except BaseException as exc:  # noqa: BLE001
                errors[i] = exc
            finally:
                turns.done(i)

    threads = []
    for i in range(count):
        if i:
            submitted[i - 1].wait()
        thread = threading.Thread(target=run, args=(i,), name=f"splitft-micro-batch-{i}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return sum(losses)
