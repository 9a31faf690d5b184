"""Label inference from what the edge receives: one vector per training example (the gradient of the
loss with respect to the trunk's output at the first position, [CLS] for BERT, or that output itself)
and the labels of a few of the examples, which the attacker is assumed to know (`known_per_class`).

Two attacks, the better one counts:
- k-means: spherical k-means into as many clusters as classes, each cluster named by the majority
  of the known examples in it;
- cosine (Li et al., ICLR'22, generalised to several classes): each example takes the class whose
  known examples' mean direction is closest in cosine.
Both are scored on the examples whose label the attacker did not know, against chance (the share of
the most frequent class among them).

`oracle_probe` is not an attack: a linear probe trained with every label (cross-validated), the
reference for how much of the label the vectors carry for a reader that knows the labels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from splitft.privacy.inversion import TokenSet, fit_linear


@dataclass(frozen=True)
class LabelAttack:
    kmeans: float
    cosine: float
    chance: float
    examples: int  # scored (labels unknown to the attacker)

    @property
    def best(self) -> float:
        return max(self.kmeans, self.cosine)


def _known_split(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of `per_class` examples of each class (fewer when a class has fewer than twice)."""
    known = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        take = min(per_class, len(members) // 2)
        known[members[torch.randperm(len(members), generator=generator)[:take]]] = True
    return known


def _spherical_kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Cluster ids of the rows of `x` (unit vectors), k-means++-seeded, best of 4 restarts by inertia."""
    best, best_score = torch.zeros(len(x), dtype=torch.long), -float("inf")
    for _ in range(4):
        centers = x[torch.randint(len(x), (1,), generator=generator)]
        while len(centers) < k:
            distance = (1 - (x @ centers.T).max(dim=1).values).clamp(min=0) + 1e-12
            centers = torch.cat([centers, x[torch.multinomial(distance, 1, generator=generator)]])
        for _ in range(iters):
            assign = (x @ centers.T).argmax(dim=1)
            for c in range(k):
                members = x[assign == c]
                if len(members):
                    centers[c] = torch.nn.functional.normalize(members.sum(0), dim=0)
        score = float((x @ centers.T).max(dim=1).values.sum())
        if score > best_score:
            best, best_score = (x @ centers.T).argmax(dim=1), score
    return best


def infer_labels(
    features: torch.Tensor, labels: torch.Tensor, *, known_per_class: int = 8, seed: int = 0
) -> LabelAttack:
    """Run both attacks on `features` [N, D] (one row per example) and score them on `labels` [N]."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(features.reshape(len(features), -1).double(), dim=1)
    labels = labels.long()
    known = _known_split(labels, known_per_class, generator)
    unknown = ~known
    truth = labels[unknown]
    chance = Counter(truth.tolist()).most_common(1)[0][1] / max(1, len(truth))
    classes = labels.unique()
    clusters = _spherical_kmeans(x, len(classes), generator)
    fallback = Counter(labels[known].tolist()).most_common(1)[0][0]
    names = {}
    for c in range(len(classes)):
        votes = labels[known & (clusters == c)].tolist()
        names[c] = Counter(votes).most_common(1)[0][0] if votes else fallback
    kmeans_pred = torch.tensor([names[int(c)] for c in clusters[unknown]])
    centroids = torch.stack(
        [torch.nn.functional.normalize(x[known & (labels == c)].sum(0), dim=0) for c in classes]
    )
    cosine_pred = classes[(x[unknown] @ centroids.T).argmax(dim=1)]
    return LabelAttack(
        kmeans=float((kmeans_pred == truth).float().mean()),
        cosine=float((cosine_pred == truth).float().mean()),
        chance=chance,
        examples=int(unknown.sum()),
    )


def _folds(n: int, folds: int, generator: torch.Generator) -> torch.Tensor:
    """Each of `n` examples' fold, 0..folds-1, in a seeded random order (sizes differ by at most one)."""
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=generator)] = torch.arange(n) % folds
    return fold


def _probe_correct(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, shrinkage: float) -> float:
    """How many of the rows outside `train` a linear probe fitted on the rows in it labels right."""
    decoder = fit_linear(TokenSet(x[train], y[train]), shrinkage=shrinkage)
    return decoder.recovery(TokenSet(x[~train], y[~train]))[0] * int((~train).sum())


def _best_shrinkage(
    x: torch.Tensor, y: torch.Tensor, folds: int, shrinkages: tuple[float, ...], generator: torch.Generator
) -> float:
    """The shrinkage of `shrinkages` with the most correct predictions over `folds` folds of (x, y)."""
    fold = _folds(len(y), folds, generator)

    def score(shrinkage: float) -> float:
        return sum(_probe_correct(x, y, fold != f, shrinkage) for f in range(folds))

    return max(shrinkages, key=score)


def oracle_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    folds: int = 5,
    seed: int = 0,
    shrinkages: tuple[float, ...] = (0.01, 0.1, 1.0),
) -> float:
    """Cross-validated accuracy of a linear probe (`fit_linear`, LDA) trained on `features` [N, D] WITH
    the true labels: what an edge that had learned the labels (the device's head, say) reads from the
    same vectors; an upper reference for the attacks, which know 8 labels per class. `folds` seeded
    folds; in each, the shrinkage is the one of `shrinkages` with the best inner cross-validation on
    the training part alone (the held-out fold never chooses anything)."""
    if folds < 2 or len(labels) < 2 * folds:
        raise ValueError(f"oracle_probe: folds must be >= 2 and at most half the {len(labels)} examples")
    generator = torch.Generator().manual_seed(seed)
    x, y = features.reshape(len(features), -1).float(), labels.long()
    outer = _folds(len(y), folds, generator)
    correct = 0.0
    for fold in range(folds):
        train = outer != fold
        chosen = _best_shrinkage(x[train], y[train], folds - 1, shrinkages, generator)
        correct += _probe_correct(x, y, train, chosen)
    return correct / len(y)
