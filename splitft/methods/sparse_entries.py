"""The entries layout's product, computed sparsely: `x @ delta^T` for a delta of nnz entries.

Entry i of the delta sits at (row r_i, column c_i) of the `[out, in]` weight with value v_i, so
`(x @ delta^T)[t, r] = sum over i with r_i = r of v_i * x[t, c_i]`: gather the selected input
columns of x, scale them by the values and add each into its output row. The backward is the same
shape of work: the output gradient's selected rows times the gathered inputs, summed over tokens,
give the values' gradient (an SDDMM); the same rows times the values, added into the selected
input columns, give the input's gradient. Everything is O(tokens x nnz) in compute; no
`[out, in]` tensor is ever built, forward or backward.

Entries are taken in parts of at most `out_features`, so every temporary is `[tokens, out]`, the
size of the output, whatever the number of entries per row (all nnz at once would be k times
that, and at a few hundred tokens outgrow the weight itself). When every row holds the same k
entries (TaskEdge's selection), part j is "the j-th entry of every row": its rows are all the
rows in order, so the output gradient needs no gather and the output no scatter. The backward
works with tokens last (`[features, tokens]`), where its gathers and scatter-adds move contiguous
rows (on this CPU the scatter-add into the input gradient was the backward's largest cost
tokens-first).

What autograd keeps from forward to backward: the input (the shared storage of the module's
input, which a LoRA on the same layer would keep too), the values (the parameter itself) and the
flat indices (the module's buffer). Rows and columns are recomputed from the indices in backward
rather than kept: two int64 copies of nnz per in-flight forward are worth more than a division.
"""

from __future__ import annotations

from typing import Any

import torch

# (rows of the part's entries, or None for "every row once, in order"; their positions in values)
Part = tuple["torch.Tensor | None", torch.Tensor]


def rows_and_columns(indices: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each flat `[out, in]` index."""
    return torch.div(indices, in_features, rounding_mode="floor"), indices.remainder(in_features)


def parts(indices: torch.Tensor, shape: tuple[int, int]) -> list[Part]:
    """The entries in parts of at most `out_features` (see the module docstring)."""
    out_features, in_features = shape
    nnz = indices.numel()
    rows, _ = rows_and_columns(indices, in_features)
    k = nnz // out_features
    by_row = torch.arange(out_features, device=indices.device)
    if k and nnz == k * out_features and torch.equal(rows, by_row.repeat_interleave(k)):
        return [(None, by_row * k + j) for j in range(k)]
    every = torch.arange(nnz, device=indices.device)
    return [(rows[p], every[p]) for p in torch.split(every, out_features)]


class SparseEntriesProduct(torch.autograd.Function):
    """`x @ delta^T` where `delta[r_i, c_i] = values[i]`; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]
    ) -> torch.Tensor:
        out_features, in_features = shape
        ctx.save_for_backward(x, values, indices)
        ctx.shape = shape
        _, cols = rows_and_columns(indices, in_features)
        flat = x.reshape(-1, in_features)
        weights = values.to(flat.dtype)
        out: torch.Tensor | None = None
        for rows, at in parts(indices, shape):
            picked = flat.index_select(1, cols[at])  # [tokens, part]: the inputs each entry reads
            if rows is None and out is not None:
                out.addcmul_(picked, weights[at])
                continue
            picked.mul_(weights[at])
            if rows is None:
                out = picked  # the first part of every row: no zeros to add into
            else:
                out = flat.new_zeros(flat.shape[0], out_features) if out is None else out
                out.index_add_(1, rows, picked)
        assert out is not None  # a SparseDeltaLinear has at least one entry
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, values, indices = ctx.saved_tensors
        out_features, in_features = ctx.shape
        _, cols = rows_and_columns(indices, in_features)
        # Tokens last here: a gather or scatter-add over rows of [features, tokens] moves whole
        # contiguous rows, several times faster on a CPU than over columns of [tokens, features].
        grad_t = grad_out.reshape(-1, out_features).t().contiguous()  # [out, tokens]
        want_x, want_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x_t = x.reshape(-1, in_features).t().contiguous().to(grad_t.dtype) if want_values else None
        grad_x_t = grad_t.new_zeros(in_features, grad_t.shape[1]) if want_x else None
        grad_values = torch.empty(values.shape, dtype=grad_t.dtype, device=grad_t.device)
        weights = values.to(grad_t.dtype)
        for rows, at in parts(indices, ctx.shape):
            at_rows = grad_t if rows is None else grad_t.index_select(0, rows)  # dL/dout of each entry's row
            if x_t is not None:
                grad_values[at] = x_t.index_select(0, cols[at]).mul_(at_rows).sum(dim=1)
            if grad_x_t is not None:
                grad_x_t.index_add_(0, cols[at], at_rows * weights[at, None])
        return (
            grad_x_t.t().reshape(x.shape).to(x.dtype) if grad_x_t is not None else None,
            grad_values.to(values.dtype) if want_values else None,
            None,
            None,
        )


def sparse_entries_product(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """`x @ delta^T` for the delta of `values` at flat `indices` of an `[out, in]` weight."""
    out = SparseEntriesProduct.apply(x, values, indices, shape)
    return out  # type: ignore[no-any-return]
