"""TaskEdge: Wanda importance against hand computation, per-row budget spread, N:M, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from splitft.errors import InvalidArgument
from splitft.methods import (
    TaskEdgeConfig,
    budget_entries,
    collect_input_norms,
    find_target_modules,
    importance,
    select_taskedge,
    taskedge_masks,
    taskedge_scores,
)
from splitft.methods.taskedge import masks_from_scores
from splitft.testing.tiny import _build, make_batch


class Toy(nn.Module):
    """One Linear under a known name; accepts (and ignores) an attention mask like an HF model."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.0, 4.0]]))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lin(x)


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return _build(family, 2, 32)


def _batches(family: str, count: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [make_batch(family, generator) for _ in range(count)]


def test_importance_matches_hand_computation() -> None:
    toy = Toy()
    first = torch.tensor([[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]])  # [batch 1, tokens 2, in 3]
    second = torch.tensor([[[2.0, 0.0, -4.0]]])  # a second calibration batch, one token
    norms = collect_input_norms(toy, [first, second], ["lin"])["lin"]
    # ||X_j||_2 over all three tokens: sqrt(1+0+4), sqrt(4+1+0), sqrt(0+9+16)
    expected_norms = torch.tensor([math.sqrt(5.0), math.sqrt(5.0), 5.0])
    torch.testing.assert_close(norms, expected_norms)
    expected = torch.tensor(
        [
            [1.0 * math.sqrt(5.0), 2.0 * math.sqrt(5.0), 0.5 * 5.0],
            [3.0 * math.sqrt(5.0), 0.0, 4.0 * 5.0],
        ]
    )
    torch.testing.assert_close(importance(toy.lin.weight, norms), expected)
    torch.testing.assert_close(taskedge_scores(toy, {"lin": norms})["lin"], expected)


def test_padding_tokens_do_not_count() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0], [100.0, 100.0, 100.0]]])
    batch = {"x": x, "attention_mask": torch.tensor([[1, 0]])}
    norms = collect_input_norms(Toy(), [batch], ["lin"])["lin"]
    torch.testing.assert_close(norms, torch.tensor([1.0, 2.0, 3.0]))


def test_importance_rejects_mismatched_norm() -> None:
    with pytest.raises(InvalidArgument, match="does not match"):
        importance(torch.ones(2, 3), torch.ones(4))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_row_holds_exactly_k_and_budget_is_respected(family: str) -> None:
    model = _model(family)
    names = find_target_modules(model)
    scores = taskedge_scores(model, collect_input_norms(model, _batches(family), names))
    rows = sum(s.shape[0] for s in scores.values())
    budget = 3 * rows + rows - 1  # floor(budget / rows) == 3
    masks = select_taskedge(scores, budget)
    assert set(masks) == set(names)
    for name, mask in masks.items():
        assert mask.shape == scores[name].shape
        assert torch.equal(mask.sum(dim=1), torch.full((mask.shape[0],), 3)), name
        # the kept entries are a row's top-3 scores
        kept_min = scores[name].masked_fill(~mask, math.inf).min(dim=1).values
        dropped_max = scores[name].masked_fill(mask, -math.inf).max(dim=1).values
        assert bool((kept_min >= dropped_max).all())
    assert sum(int(m.sum()) for m in masks.values()) <= budget


def test_default_targets_are_the_block_linears() -> None:
    model = _model("gpt2")
    names = find_target_modules(model)
    assert names and all(n.startswith("transformer.h.") for n in names)
    assert "lm_head" not in names
    assert find_target_modules(model, ["c_attn"]) == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
    ]
    with pytest.raises(InvalidArgument, match="no nn.Linear"):
        find_target_modules(model, ["nothing_like_this"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_whole_method_respects_the_model_budget(family: str) -> None:
    model = _model(family)
    config = TaskEdgeConfig(budget_fraction=0.02)
    masks = taskedge_masks(model, _batches(family), config)
    budget = budget_entries(model, config)
    assert budget == math.floor(0.02 * sum(p.numel() for p in model.parameters()))
    rows = sum(m.shape[0] for m in masks.values())
    k = budget // rows
    assert k >= 1
    assert all(bool((m.sum(dim=1) == k).all()) for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) <= budget


def test_budget_below_one_per_row_still_gives_one_entry_per_row() -> None:
    scores = {"a": torch.rand(4, 8), "b": torch.rand(2, 8)}
    masks = select_taskedge(scores, total_budget_entries=3)
    assert all(bool((m.sum(dim=1) == 1).all()) for m in masks.values())


def test_k_is_capped_at_a_layers_width() -> None:
    scores = {"narrow": torch.rand(2, 3), "wide": torch.rand(2, 50)}
    masks = select_taskedge(scores, total_budget_entries=40)  # k = 10
    assert bool(masks["narrow"].all())
    assert bool((masks["wide"].sum(dim=1) == 10).all())


def _groups(mask: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = mask.shape
    return mask.reshape(rows, cols // m, m).sum(dim=-1)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 8), (1, 2)])
@pytest.mark.parametrize("fraction", [0.001, 0.05])  # k = 1 (budget below a row each) and k = 3
def test_n_m_is_a_constraint_on_the_budgeted_selection(n: int, m: int, fraction: float) -> None:
    model = _model("gpt2")
    config = TaskEdgeConfig(budget_fraction=fraction, n_m=(n, m))
    masks = taskedge_masks(model, _batches("gpt2"), config)
    budget, rows = budget_entries(model, config), sum(mask.shape[0] for mask in masks.values())
    k = max(1, budget // rows)
    # Within budget (or one per row when the budget is below that: the method's floor, logged).
    assert sum(int(mask.sum()) for mask in masks.values()) <= max(budget, rows)
    for name, mask in masks.items():
        assert bool((_groups(mask, m) <= n).all()), name  # N:M-compatible
        assert bool((mask.sum(dim=1) == min(k, n * mask.shape[1] // m)).all()), name  # k per row kept
    unconstrained = taskedge_masks(model, _batches("gpt2"), TaskEdgeConfig(budget_fraction=fraction))
    assert sum(int(x.sum()) for x in masks.values()) == sum(int(x.sum()) for x in unconstrained.values())


def test_n_m_keeps_the_best_entries_the_constraint_allows() -> None:
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0, 6.0, 0.5, 0.2, 0.1]])
    # k = 3: unconstrained 9, 8, 7 (all in the first group); 2:4 allows two there, so 9, 8 and 6.
    mask = select_taskedge({"row": scores}, total_budget_entries=3, n_m=(2, 4))["row"]
    assert mask.nonzero()[:, 1].tolist() == [0, 1, 4]
    assert select_taskedge({"row": scores}, 3)["row"].nonzero()[:, 1].tolist() == [0, 1, 2]


def test_k_above_what_n_m_allows_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="splitft.methods.taskedge.scoring"):
        mask = select_taskedge({"row": torch.rand(2, 8)}, total_budget_entries=12, n_m=(1, 4))["row"]  # k = 6
    assert mask.sum(dim=1).tolist() == [2, 2] and bool((_groups(mask, 4) == 1).all())
    assert "k=6 per row > 2 allowed by N:M 1:4" in caplog.text


def test_n_m_needs_divisible_width() -> None:
    with pytest.raises(InvalidArgument, match="'odd': in_features=6 is not a multiple of N:M's M=4"):
        select_taskedge({"odd": torch.rand(2, 6)}, 100, n_m=(2, 4))


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_must_be_a_positive_integer(k: object) -> None:
    with pytest.raises(InvalidArgument, match="k \\(entries per row\\) must be an integer >= 1"):
        masks_from_scores({"a": torch.rand(2, 4)}, k, (2, 4))  # type: ignore[arg-type]


def test_same_calibration_data_gives_the_same_mask() -> None:
    model = _model("llama")
    config = TaskEdgeConfig(budget_fraction=0.05)
    first = taskedge_masks(model, _batches("llama"), config)
    second = taskedge_masks(model, _batches("llama"), config)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_ties_break_toward_the_lower_column() -> None:
    masks = select_taskedge({"flat": torch.ones(3, 6)}, total_budget_entries=6)  # k = 2
    assert bool(masks["flat"][:, :2].all()) and not bool(masks["flat"][:, 2:].any())
    grouped = select_taskedge({"flat": torch.ones(1, 8)}, 2, n_m=(1, 4))["flat"]  # k = 2
    assert grouped.nonzero()[:, 1].tolist() == [0, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_fraction": 0.0}, "budget_fraction must be in"),
        ({"budget_fraction": 1.5}, "budget_fraction must be in"),
        ({"budget_fraction": "0.1"}, "budget_fraction must be a number"),
        ({"n_m": (4, 2)}, "1 <= N <= M, got N=4, M=2"),
        ({"n_m": (0, 4)}, "1 <= N <= M, got N=0, M=4"),
        ({"n_m": (2,)}, "pair"),
        ({"n_m": (2, 4, 8)}, "pair"),
        ({"n_m": "2:4"}, "pair"),
        ({"n_m": (2.0, 4)}, "two integers"),
        ({"n_m": (True, 4)}, "two integers"),
        ({"target_modules": "q_proj"}, "target_modules"),
        ({"target_modules": [""]}, "target_modules"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskEdgeConfig(**kwargs)
