"""The entries layout's product, computed sparsely: `x @ delta^T` for a delta of nnz entries.

Entry i of the delta sits at (row r_i, column c_i) of the `[out, in]` weight with value v_i, so
`(x @ delta^T)[t, r] = sum over i with r_i = r of v_i * x[t, c_i]`: gather the selected input
columns of x (`[tokens, nnz]`), scale them by the values and add each into its output row. The
backward is the same shape of work: the output gradient's selected rows times the gathered
inputs, summed over tokens, give the values' gradient (an SDDMM); the same rows times the values,
added into the selected input columns, give the input's gradient. Everything is O(tokens x nnz);
no `[out, in]` tensor is ever built, forward or backward.

What autograd keeps from forward to backward: the input (the shared storage of the module's
input, which a LoRA on the same layer would keep too), the values (the parameter itself) and the
flat indices (the module's buffer). Rows and columns are recomputed from the indices in backward
rather than kept: two int64 copies of nnz per in-flight forward are worth more than a division.

When every row holds the same number k of entries (TaskEdge's selection, k per row), the rows are
implicit (entry i is in row i // k) and the scatter-add becomes a reshape and a sum over k.
"""

from __future__ import annotations

from typing import Any

import torch


def rows_and_columns(indices: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each flat `[out, in]` index."""
    return torch.div(indices, in_features, rounding_mode="floor"), indices.remainder(in_features)


def uniform_per_row(indices: torch.Tensor, out_features: int, in_features: int) -> int:
    """k when the sorted flat indices hold exactly k entries in every row, in row order; else 0."""
    nnz = indices.numel()
    if nnz == 0 or nnz % out_features:
        return 0
    k = nnz // out_features
    rows, _ = rows_and_columns(indices, in_features)
    expected = torch.arange(out_features, device=indices.device).repeat_interleave(k)
    return k if torch.equal(rows, expected) else 0


class SparseEntriesProduct(torch.autograd.Function):
    """`x @ delta^T` where `delta[r_i, c_i] = values[i]`; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        shape: tuple[int, int],
        per_row: int,
    ) -> torch.Tensor:
        out_features, in_features = shape
        ctx.save_for_backward(x, values, indices)
        ctx.shape, ctx.per_row = shape, per_row
        flat = x.reshape(-1, in_features)
        rows, cols = rows_and_columns(indices, in_features)
        picked = flat.index_select(1, cols) * values.to(flat.dtype)  # [tokens, nnz]
        if per_row:
            out = picked.view(-1, out_features, per_row).sum(dim=-1)
        else:
            out = flat.new_zeros(flat.shape[0], out_features).index_add_(1, rows, picked)
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, values, indices = ctx.saved_tensors
        out_features, in_features = ctx.shape
        rows, cols = rows_and_columns(indices, in_features)
        grad = grad_out.reshape(-1, out_features)
        tokens = grad.shape[0]
        # The output gradient at each entry's row, as [tokens, nnz] or (k uniform) [tokens, out, 1].
        grad_rows = grad.unsqueeze(-1) if ctx.per_row else grad.index_select(1, rows)
        entry_shape = (-1, out_features, ctx.per_row) if ctx.per_row else (-1, values.numel())
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            spread = (grad_rows * values.to(grad.dtype).view(entry_shape[1:])).reshape(tokens, -1)
            grad_x = grad.new_zeros(tokens, in_features).index_add_(1, cols, spread)
            grad_x = grad_x.view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            picked = x.reshape(-1, in_features).index_select(1, cols).view(entry_shape)
            grad_values = (grad_rows * picked.to(grad.dtype)).sum(dim=0).flatten().to(values.dtype)
        return grad_x, grad_values, None, None, None


def sparse_entries_product(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int], per_row: int
) -> torch.Tensor:
    """`x @ delta^T` for the delta of `values` at flat `indices` of an `[out, in]` weight."""
    out = SparseEntriesProduct.apply(x, values, indices, shape, per_row)
    return out  # type: ignore[no-any-return]
