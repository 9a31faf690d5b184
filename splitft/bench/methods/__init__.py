"""`splitft bench methods`: LoRA vs TaskEdge vs TinyTrain and baselines at matched trainable budgets.

Two tasks:

* `classification`: the demo's real task, pretrained all-MiniLM-L6-v2 classifying which stdlib
  package a docstring comes from (`splitft.data.stdlib_task`); metric: test (held-out) accuracy.
* `causal_lm`: a Llama-style model built from a config (`splitft.testing.tiny`, 4 blocks, hidden 64,
  RANDOM init: no pretrained causal LM can be downloaded here), first pretrained for a few
  seconds, every weight, on stdlib SOURCE CODE (`lm_pretrain_steps`; 0 skips it), then adapted
  by each method to next-byte prediction of the docstrings, one token per byte (non-ASCII bytes
  become 127, 0 pads); metric: test (held-out) loss (nats per byte).

Eight methods, each in a fresh Python process (`python -m splitft.bench.methods --worker`) so
that their memory peaks do not mix (`in_process`, for `--quick` only, runs them in the parent):

* `lora` (split): `SplitModel` with a LoRA config whose rank and target-module subset (among the
  blocks' Linear modules, the ones TaskEdge scores) come closest to the matched budget.
* `taskedge` (split): `SplitModel(method=TaskEdgeConfig(budget_fraction))`, the fraction set so
  that its budget is the matched budget, calibrated on a few labels-free batches.
* `tinytrain` (split): `SplitModel(method=TinyTrainConfig(memory_budget, inf))` calibrated on a
  labelled support set, with finer channel ratios and the memory budget whose selection's size
  is closest to the matched budget (sized on the whole model BEFORE the memory baseline; a
  benchmark artefact to match budgets; a real device is given its budget).
* one-process baselines (`baselines`): `random` and `magnitude` (TaskEdge's k per row, at random
  positions or by |W|), `tinytrain_nocost` (Fisher potentials alone, no cost terms), `full`
  fine-tuning and `head_only`; the last two are not budget-matched.

The matched budget (`budgets`) is TaskEdge's k x rows closest to `budget_fraction` x all
parameters; each method reports its trainable entries and their ratio to it. Every choice (the
learning rate, from `lr_multipliers`, with the first seed) is made on a validation split of the
training examples; the figures are the test split's, mean and spread over `seeds`.

A classification head the checkpoint lacks trains in every method, and starts from the same
seeded values in every method, so `before` is the same for all four. The budget counts what a
method adds on top of it. Device memory is the worker's peak RSS (`VmHWM`, reset through
`/proc/self/clear_refs` once libraries and data are loaded) minus its RSS at that reset: on a
split run the device's share only (the edge is another process, shared by the split runs, and
not measured); on an unsplit run the whole model. Bytes on the wire are serialized gRPC messages
both ways (`SplitModel.stats`), calibration and evaluation included.

The parts, bottom up: `config` (the config and constants), `data` (batches), `pretrain` (the
causal LM's base, shared with `bench converge`), `builders` (each method's model), `worker` (one
method in its own process), `report` (the Markdown table) and `run` (the parent: plan, edge,
workers, report).
"""

from __future__ import annotations

from splitft.bench.methods.builders import size_tinytrain_budget
from splitft.bench.methods.config import (
    BUDGET_MATCHED,
    METHODS,
    QUICK,
    SPLIT_METHODS,
    TASKS,
    MethodsBenchConfig,
)
from splitft.bench.methods.data import encode_bytes
from splitft.bench.methods.pretrain import pretrain_corpus, pretrained_tiny_llama
from splitft.bench.methods.report import markdown_table
from splitft.bench.methods.run import main, run_methods_bench
from splitft.bench.methods.worker import run_method

__all__ = [
    "BUDGET_MATCHED",
    "METHODS",
    "QUICK",
    "SPLIT_METHODS",
    "TASKS",
    "MethodsBenchConfig",
    "encode_bytes",
    "main",
    "markdown_table",
    "pretrain_corpus",
    "pretrained_tiny_llama",
    "run_method",
    "run_methods_bench",
    "size_tinytrain_budget",
]
