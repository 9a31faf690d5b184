"""One few-shot episode: every method from the same backbone and the same prototype head.

The new N-way head starts as the class prototypes of the support set (ProtoNet as a linear layer:
`W_c = 2 mu_c`, `b_c = -|mu_c|^2` on the pooled features), so `prototypes` is the episode's
no-training reference and every trained method starts from it. Then, each on a fresh copy:

* `last_layer`: the head alone (TinyTrain's LastLayer baseline);
* `full`: every weight (FullTrain);
* `tinytrain@M/C`: TinyTrain's selection on the support set under a memory budget of M and a MAC
  budget of C (shares of training every channel of every block Linear, priced by the cost model),
  plus the head.

Each trains `steps` AdamW steps on the whole support set; the first two are measured with the
memory bench's instrument (`measure.py`), then the query set is scored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitft.bench.fewshot.data import Batch, Episode
from splitft.bench.fewshot.measure import Run, adamw, measured_runs, train_step
from splitft.methods import TinyTrainConfig, apply_masks, find_target_modules
from splitft.methods.tinytrain import fisher_pass, layer_costs, select_tinytrain, sided_cost
from splitft.methods.tinytrain.cost import OPTIMIZER_COPIES

BYTES = 4  # fp32
MEASURED_STEPS = 2


@dataclass
class Context:
    """What every method of one episode shares: the start model and the cost model's view of it."""

    base: nn.Module  # backbone + prototype head
    episode: Episode
    fisher: Any  # the FisherPass on the support set
    costs: dict[str, Any]
    everything: Any  # SelectionCost of every channel of every block Linear
    head_macs: int  # the head's weight-gradient MACs
    head_state: int  # the head's gradient and AdamW moments, bytes


def _inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


def pooled_features(model: nn.Module, inputs: Batch) -> torch.Tensor:
    """What the model's classifier reads: BERT's pooler output, or ViT's final [CLS] token."""
    if hasattr(model, "bert"):
        return model.get_submodule("bert")(**inputs).pooler_output
    return model.get_submodule("vit")(**inputs).last_hidden_state[:, 0, :]


def prototype_head(model: nn.Module, support: Batch, ways: int) -> nn.Linear:
    """The linear head equal to nearest-prototype (squared Euclidean) on the pooled features."""
    model.eval()
    with torch.no_grad():
        features = pooled_features(model, _inputs(support))
    labels = support["labels"]
    means = torch.stack([features[labels == c].mean(0) for c in range(ways)])
    head = nn.Linear(features.shape[-1], ways)
    with torch.no_grad():
        head.weight.copy_(2 * means)
        head.bias.copy_(-(means**2).sum(-1))
    return head


def prepare(backbone: nn.Module, episode: Episode, ways: int) -> Context:
    """The backbone with the episode's prototype head, and one Fisher pass over the support set."""
    base: Any = copy.deepcopy(backbone)  # a BertForSequenceClassification or ViTForImageClassification
    base.classifier = prototype_head(base, episode.support, ways)
    base.num_labels = ways  # the losses BERT's and ViT's classifiers compute read these
    base.config.num_labels = ways
    base.requires_grad_(False)
    fisher = fisher_pass(base, [episode.support], None, find_target_modules(base))
    costs = layer_costs(base, fisher)
    everything = sided_cost(costs, {n: c.out_features for n, c in costs.items()}, BYTES)
    rows = int(episode.support["labels"].numel())
    head_params = sum(p.numel() for p in base.classifier.parameters())
    return Context(
        base,
        episode,
        fisher,
        costs,
        everything,
        head_macs=ways * base.classifier.in_features * rows,
        head_state=OPTIMIZER_COPIES * BYTES * head_params,
    )


def query_accuracy(model: nn.Module, query: Batch) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs(query)).logits
    return float((logits.argmax(-1) == query["labels"]).float().mean())


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tinytrain(ctx: Context, model: nn.Module, method: str) -> tuple[int, int | None, dict[str, Any]]:
    """Select on the support set under the method's budgets, apply; (MACs, predicted bytes, details)."""
    memory_share, macs_share = (float(x) for x in method.removeprefix("tinytrain@").split("/"))
    config = TinyTrainConfig(ctx.everything.memory_bytes * memory_share, ctx.everything.macs * macs_share)
    selection = select_tinytrain(ctx.fisher.potentials, ctx.costs, config)
    if selection.masks:
        apply_masks(model, selection.masks)
    details = {
        "budget": {
            "memory_bytes": round(config.memory_budget_bytes),
            "macs": round(config.compute_budget_macs),
        },
        "selection": {n: selection.ratios[n] for n in selection.masks},
    }
    # an empty selection trains the head alone, which the cost model does not price: no prediction
    predicted = selection.memory_bytes + ctx.head_state if selection.masks else None
    return selection.macs + ctx.head_macs, predicted, details


def setup_method(ctx: Context, method: str, lr: dict[str, float]) -> tuple[Run, dict[str, Any]]:
    """A fresh copy of the start model set up for `method` (not "prototypes"), and its figures so far."""
    model = copy.deepcopy(ctx.base)
    result: dict[str, Any] = {"method": method, "predicted_bytes": None}
    if method == "last_layer":
        result["backward_macs"], rate = ctx.head_macs, lr["last_layer"]
    elif method == "full":
        model.requires_grad_(True)
        result["backward_macs"], rate = ctx.everything.macs + ctx.head_macs, lr["full"]
    else:
        result["backward_macs"], result["predicted_bytes"], details = _tinytrain(ctx, model, method)
        result.update(details)
        rate = lr["tinytrain"]
    model.classifier.requires_grad_(True)
    result["trainable"] = _trainable(model)
    model.train()
    support = ctx.episode.support
    return Run(model, adamw(model, rate), lambda m: m(**support).loss), result


def run_episode(ctx: Context, methods: list[str], lr: dict[str, float], steps: int) -> list[dict[str, Any]]:
    """Every method on the episode, in the given order: accuracy, measured and predicted bytes, MACs."""
    results: list[dict[str, Any]] = []
    runs: list[Run] = []
    for method in methods:
        if method == "prototypes":
            results.append(
                {"method": method, "trainable": 0, "accuracy": query_accuracy(ctx.base, ctx.episode.query)}
            )
            continue
        run, result = setup_method(ctx, method, lr)
        runs.append(run)
        results.append(result)
    measured = measured_runs(runs, min(MEASURED_STEPS, steps))
    trained = [r for r in results if r["method"] != "prototypes"]
    for run, result, nbytes in zip(runs, trained, measured, strict=True):
        for _ in range(steps - MEASURED_STEPS):
            train_step(run.model, run.optimizer, run.loss_of)
        result["measured_bytes"] = nbytes
        result["accuracy"] = query_accuracy(run.model, ctx.episode.query)
    return results


def method_names(budgets: tuple[tuple[float, float], ...]) -> list[str]:
    """Every method of an episode, TinyTrain once per budget."""
    return ["prototypes", "last_layer", "full", *(f"tinytrain@{m:g}/{c:g}" for m, c in budgets)]
