"""splitft.privacy: the config's refusals (each naming its field), the transforms, and the attacks on
data whose answer is known (separable labels are found, random ones are not; a linear map of token
embeddings is decoded, noise defeats it)."""

from __future__ import annotations

import math

import pytest
import torch

from splitft.errors import InvalidArgument
from splitft.privacy.adaptive import coral_align
from splitft.privacy.config import PrivacyConfig
from splitft.privacy.inversion import TokenSet, fit_linear, fit_mlp, token_set
from splitft.privacy.labels import infer_labels
from splitft.privacy.transforms import (
    canonical_leak,
    clip_and_noise,
    clip_rows,
    distance_correlation,
    sample_tokens,
)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"activation_clip": 0.0}, "privacy.activation_clip must be a finite number > 0"),
        ({"activation_clip": -1.0}, "privacy.activation_clip"),
        ({"activation_clip": math.inf}, "privacy.activation_clip"),
        ({"activation_clip": "1"}, "privacy.activation_clip must be a number"),
        (
            {"activation_noise": -0.1, "activation_clip": 1.0},
            "privacy.activation_noise must be a finite number >= 0",
        ),
        ({"activation_noise": 1.0}, "privacy.activation_noise needs privacy.activation_clip"),
        ({"gradient_noise": 1.0}, "privacy.gradient_noise needs privacy.gradient_clip"),
        ({"gradient_clip": math.nan}, "privacy.gradient_clip"),
        ({"nopeek_weight": -1.0}, "privacy.nopeek_weight"),
        ({"nopeek_weight": True}, "privacy.nopeek_weight must be a number"),
        ({"nopeek_tokens": 2}, "privacy.nopeek_tokens must lie in [4, 4096]"),
        ({"nopeek_tokens": 8.0}, "privacy.nopeek_tokens must be an integer"),
        ({"clip_scope": "batch"}, "privacy.clip_scope must be one of ['token', 'example']"),
        ({"cca_weight": -0.5}, "privacy.cca_weight must be a finite number >= 0"),
        ({"cca_weight": math.nan}, "privacy.cca_weight"),
        ({"private_warmup": -1, "cca_weight": 1.0}, "privacy.private_warmup must lie in [0, 10000000]"),
        ({"private_warmup": 2.0, "cca_weight": 1.0}, "privacy.private_warmup must be an integer"),
        ({"private_warmup": 3}, "privacy.private_warmup trains on the penalties alone"),
        ({"warmup_consistency": 1.0, "cca_weight": 1.0}, "privacy.warmup_consistency acts during"),
        ({"warmup_consistency": -1.0}, "privacy.warmup_consistency must be a finite number >= 0"),
        ({"warmup_task": 1.0, "cca_weight": 1.0}, "privacy.warmup_task needs privacy.private_warmup > 0"),
        (
            {"warmup_task": -0.3, "cca_weight": 1.0, "private_warmup": 4},
            "privacy.warmup_task must be a finite number >= 0",
        ),
        ({"warmup_task": math.inf}, "privacy.warmup_task must be a finite number >= 0"),
        ({"warmup_task": "1"}, "privacy.warmup_task must be a number"),
        ({"nopeek_warmup": -1}, "privacy.nopeek_warmup must lie in [0, 10000000]"),
        ({"activation_nois": 1.0}, "privacy: unknown field(s) ['activation_nois']"),
        ({"withhold_gradients": 1}, "privacy.withhold_gradients must be a boolean"),
        ({"head_skip": 1}, "privacy.head_skip must be a boolean"),
        ({"cca_target": 0.5}, "privacy.cca_target bounds the CCA penalty: set privacy.cca_weight"),
        ({"cca_target": 1.0, "cca_weight": 1.0}, "privacy.cca_target must lie in [0, 1), got 1.0"),
        ({"cca_target": -0.1, "cca_weight": 1.0}, "privacy.cca_target must be a finite number >= 0"),
        (
            {"withhold_gradients": True, "gradient_clip": 1.0},
            "privacy.withhold_gradients sends no gradient: privacy.gradient_clip has nothing to clip",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_field(fields: dict, named: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PrivacyConfig.from_dict(fields)
    assert named in caught.value.message


def test_defaults_are_off_and_a_mapping_round_trips() -> None:
    assert not PrivacyConfig().active and PrivacyConfig.from_dict(None) == PrivacyConfig()
    config = PrivacyConfig(activation_clip=2.0, activation_noise=0.5, gradient_clip=1.0, nopeek_weight=0.1)
    assert config.active and PrivacyConfig.from_dict(config.to_dict()) == config
    assert "act clip 2/token noise 0.5" in config.describe() and "nopeek 0.1" in config.describe()
    warmed = PrivacyConfig(cca_weight=0.5, private_warmup=40)
    assert warmed.describe() == "cca 0.5, private warm-up 40"
    assert PrivacyConfig.from_dict(warmed.to_dict()) == warmed
    tasked = PrivacyConfig(cca_weight=1.0, private_warmup=40, warmup_consistency=0.1, warmup_task=0.3)
    assert tasked.describe() == "cca 1, private warm-up 40 (trunk consistency 0.1, task 0.3)"
    assert PrivacyConfig.from_dict(tasked.to_dict()) == tasked


def test_canonical_leak_is_blind_to_affine_moves_and_sees_unrelated_vectors() -> None:
    generator = torch.Generator().manual_seed(0)
    public = torch.randn(600, 12, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator))
    mixing = rotation * torch.linspace(0.5, 2.0, 12)  # a rotation and a stretch (condition number 4)
    moved = public @ mixing * 7.0 + 2.0
    assert float(canonical_leak(public, public)) > 0.97
    assert float(canonical_leak(public, moved)) > 0.96  # an aligning edge undoes this move: so does the leak
    unrelated = torch.randn(600, 12, generator=generator)
    assert float(canonical_leak(public, unrelated)) < 0.05
    squared = public**2  # dependent, but on no affine image of the public vectors
    assert float(canonical_leak(public, squared)) < 0.05
    hidden = moved.clone().requires_grad_(True)
    canonical_leak(public, hidden).backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    with pytest.raises(ValueError, match="same number"):
        canonical_leak(public, public[:10])


def test_clip_bounds_each_token_or_each_example() -> None:
    x = torch.randn(3, 5, 8) * 10
    assert torch.all(clip_rows(x, 2.0, "token").norm(dim=-1) <= 2.0 + 1e-5)
    per_example = clip_rows(x, 2.0, "example").reshape(3, -1).norm(dim=1)
    assert torch.allclose(per_example, torch.full((3,), 2.0), atol=1e-5)
    small = torch.full((1, 1, 4), 0.1)
    assert torch.equal(clip_rows(small, 2.0, "token"), small)  # under the bound: unchanged


def test_noise_has_the_documented_scale_and_is_constant_for_autograd() -> None:
    x = torch.zeros(64, 16, 32, requires_grad=True)
    out = clip_and_noise(x, 3.0, 0.5, "token", torch.Generator().manual_seed(0))
    assert abs(float(out.detach().std()) - 1.5) < 0.05
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # under the bound the clip is the identity


def test_distance_correlation_separates_dependence_from_independence() -> None:
    torch.manual_seed(0)
    a = torch.randn(200, 6)
    rotation = torch.linalg.qr(torch.randn(6, 6)).Q
    assert float(distance_correlation(a, a @ rotation * 3 + 1)) == pytest.approx(1.0, abs=1e-4)
    assert float(distance_correlation(a, torch.randn(200, 6))) < 0.4  # biased up at small n
    with pytest.raises(ValueError, match="same number"):
        distance_correlation(a, a[:10])


def test_sample_tokens_keeps_real_tokens_and_pairs_them() -> None:
    e, h = torch.arange(24.0).reshape(2, 3, 4), torch.arange(24.0).reshape(2, 3, 4) * 2
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a, b = sample_tokens(e, h, mask, 100)
    assert a.shape == (3, 4) and torch.equal(b, a * 2)
    assert sample_tokens(e, h, None, 4)[0].shape == (4, 4)


def _synthetic_tokens(n: int, vocab: int, noise: float, seed: int) -> tuple[TokenSet, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, 16, generator=torch.Generator().manual_seed(99))
    tokens = torch.randint(vocab, (n,), generator=generator)
    hidden = table[tokens] + noise * torch.randn(n, 16, generator=generator)
    return TokenSet(hidden, tokens), table


def test_decoders_recover_a_known_map_and_noise_defeats_them() -> None:
    public, _ = _synthetic_tokens(4000, 20, 0.1, seed=1)
    private, _ = _synthetic_tokens(1000, 20, 0.1, seed=2)
    assert fit_linear(public).recovery(private)[0] > 0.95
    assert fit_mlp(public, epochs=3).recovery(private)[0] > 0.95
    noisy = TokenSet(private.hidden + 20 * torch.randn_like(private.hidden), private.tokens)
    top1, top5 = fit_linear(public, noise_std=20).recovery(noisy)
    assert top1 < 0.2 and top5 >= top1


def test_the_aligned_decoder_undoes_an_affine_move_and_not_a_scramble() -> None:
    public, _ = _synthetic_tokens(4000, 20, 0.1, seed=1)
    private, _ = _synthetic_tokens(2000, 20, 0.1, seed=2)
    decoder = fit_linear(public)
    offset = 10 * torch.randn(16, generator=torch.Generator().manual_seed(3))
    moved = TokenSet(0.5 * private.hidden + offset, private.tokens)  # an affine move of every vector
    assert decoder.recovery(moved)[0] < 0.3
    assert decoder.recovery(coral_align(moved, public))[0] > 0.95  # undone by matching the moments
    scrambled = TokenSet(private.hidden[torch.randperm(len(private))], private.tokens)
    assert decoder.recovery(coral_align(scrambled, public))[0] < 0.2  # nothing to align: chance is 5%


def test_token_set_drops_padding_and_special_tokens() -> None:
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    kept = token_set(torch.randn(2, 4, 3), ids, mask, {0, 101, 102})
    assert kept.tokens.tolist() == [7, 8, 9] and kept.hidden.shape == (3, 3)


def test_label_attacks_find_separable_labels_and_not_random_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centers = torch.randn(4, 32, generator=generator) * 3
    separable = centers[labels] + torch.randn(200, 32, generator=generator)
    found = infer_labels(separable, labels, known_per_class=4)
    assert found.kmeans > 0.9 and found.cosine > 0.9 and found.examples == 184
    assert found.chance == pytest.approx(0.25, abs=0.01)
    random = infer_labels(torch.randn(200, 32, generator=generator), labels, known_per_class=4)
    assert random.best < 0.45
