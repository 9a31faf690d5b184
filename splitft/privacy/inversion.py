"""Token recovery from h_k: decoders a curious edge trains on public text through the public device
blocks, applied to the activations it receives.

The edge knows the split, the public weights of every span and the job's privacy config (Kerckhoffs),
so it trains on public h_k transformed the same way: clipped like the device clips, and with the
same noise (the linear decoder analytically, the MLP by sampling it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from splitft.privacy.config import PrivacyConfig
from splitft.privacy.transforms import clip_and_noise, clip_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenSet:
    """Token vectors [N, D] and the token id [N] each came from (special tokens and padding dropped)."""

    hidden: torch.Tensor
    tokens: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def token_set(
    hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None, special: set[int]
) -> TokenSet:
    """Flatten one batch [B, T, D] to its real, non-special tokens."""
    keep = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    for token in special:
        keep &= input_ids != token
    return TokenSet(hidden[keep].float(), input_ids[keep].long())


def concat(sets: list[TokenSet]) -> TokenSet:
    return TokenSet(torch.cat([s.hidden for s in sets]), torch.cat([s.tokens for s in sets]))


@torch.no_grad()
def public_token_set(
    model_dir: str | Path,
    texts: list[str],
    layer: int,
    *,
    privacy: PrivacyConfig = PrivacyConfig(),
    max_length: int = 64,
    batch_size: int = 64,
    trunk_blocks: int = 0,
    seed: int = 0,
) -> TokenSet:
    """h_`layer` (the input of block `layer`) of `texts` through the public weights, clipped as the
    device would clip it (noise is the decoders' business). With `trunk_blocks` > 0, the trunk's
    output instead: that h_`layer`, clipped and noised as the device sends it (the noise drawn from
    `seed`), through the next `trunk_blocks` public blocks, as the edge runs them."""
    if trunk_blocks < 0 or layer < 1:
        raise ValueError(
            f"public_token_set: layer must be >= 1 and trunk_blocks >= 0, got {layer}, {trunk_blocks}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    blocks = _keep_blocks(base, layer + trunk_blocks)
    if trunk_blocks > 0:
        generator = torch.Generator().manual_seed(seed)
        blocks[layer].register_forward_pre_hook(partial(_as_sent, privacy, generator), with_kwargs=True)
    special = set(tokenizer.all_special_ids)
    sets = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out = base(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
        )
        hidden = out.hidden_states[layer + trunk_blocks]
        if privacy.activation_clip is not None and trunk_blocks == 0:
            hidden = clip_rows(hidden, privacy.activation_clip, privacy.clip_scope)
        sets.append(token_set(hidden, enc["input_ids"], enc["attention_mask"], special))
    return concat(sets)


def _as_sent(
    privacy: PrivacyConfig, generator: torch.Generator, _module: nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """A pre-hook on the trunk's first block: its input h_k clipped and noised as the device sends it."""
    if privacy.activation_clip is None:
        return args, kwargs
    clip, noise, scope = privacy.activation_clip, privacy.activation_noise, privacy.clip_scope
    if args:
        return (clip_and_noise(args[0], clip, noise, scope, generator), *args[1:]), kwargs
    hidden = clip_and_noise(kwargs["hidden_states"], clip, noise, scope, generator)
    return args, {**kwargs, "hidden_states": hidden}


def _keep_blocks(base: nn.Module, stop: int) -> nn.ModuleList:
    """Drop the blocks from `stop` on (nothing later is run) and return the blocks kept."""
    total = getattr(base.config, "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == total:
            del module[stop:]
            return module
    raise ValueError(f"{type(base).__name__}: no list of {total} blocks found")


class Decoder(nn.Module):
    """h -> scores over the public vocabulary (`classes`: the token id of each output)."""

    classes: torch.Tensor

    def __init__(self, net: nn.Module, classes: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("classes", classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden)

    @torch.no_grad()
    def recovery(self, private: TokenSet, batch_size: int = 4096) -> tuple[float, float]:
        """(top-1, top-5) share of `private`'s tokens whose id the decoder ranks first / in its top 5."""
        top1 = top5 = 0
        for start in range(0, len(private), batch_size):
            scores = self(private.hidden[start : start + batch_size])
            best = self.classes[scores.topk(min(5, scores.shape[1]), dim=1).indices]
            truth = private.tokens[start : start + batch_size, None]
            top1 += int((best[:, :1] == truth).sum())
            top5 += int((best == truth).any(dim=1).sum())
        return top1 / max(1, len(private)), top5 / max(1, len(private))


def _classes(public: TokenSet) -> tuple[torch.Tensor, torch.Tensor]:
    classes, targets = torch.unique(public.tokens, return_inverse=True)
    return classes, targets


def fit_linear(public: TokenSet, noise_std: float = 0.0, shrinkage: float = 1e-2) -> Decoder:
    """Linear discriminant analysis: one Gaussian per token with a shared covariance, in closed form
    (a linear classifier; least squares to one-hot targets reads far fewer tokens). Noise of std
    `noise_std` on every coordinate is trained against exactly: it adds `noise_std^2` to the shared
    covariance's diagonal. `shrinkage`: ridge on the covariance, as a share of its mean variance."""
    classes, targets = _classes(public)
    x = public.hidden.double()
    dims = x.shape[1]
    counts = torch.bincount(targets, minlength=len(classes)).double()
    means = torch.zeros(len(classes), dims, dtype=torch.float64).index_add_(0, targets, x) / counts[:, None]
    residual = x - means[targets]
    covariance = residual.T @ residual / len(x)
    ridge = shrinkage * float(covariance.diagonal().mean()) + noise_std**2
    covariance += ridge * torch.eye(dims, dtype=torch.float64)
    weights = torch.linalg.solve(covariance, means.T)  # [dims, classes]
    bias = -0.5 * (means * weights.T).sum(dim=1) + torch.log(counts / counts.sum())
    linear = nn.Linear(dims, len(classes))
    with torch.no_grad():
        linear.weight.copy_(weights.T.float())
        linear.bias.copy_(bias.float())
    return Decoder(linear, classes)


def fit_mlp(
    public: TokenSet,
    noise_std: float = 0.0,
    *,
    width: int = 512,
    epochs: int = 4,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
) -> Decoder:
    """A one-hidden-layer MLP trained with cross-entropy (Adam), fresh noise of `noise_std` drawn on
    every batch."""
    classes, targets = _classes(public)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(public.hidden.shape[1], width), nn.GELU(), nn.Linear(width, len(classes)))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(len(public), generator=generator)
        total = 0.0
        for start in range(0, len(public), batch_size):
            index = order[start : start + batch_size]
            hidden = public.hidden[index]
            if noise_std > 0:
                hidden = hidden + noise_std * torch.randn(hidden.shape, generator=generator)
            loss = nn.functional.cross_entropy(net(hidden), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        logger.debug("mlp decoder epoch %d: loss %.3f", epoch, total / len(public))
    return Decoder(net.eval(), classes)
