"""The sixth pass's meter additions on data whose answer is known: the decoder on the trunk's output
(the audit's `trunk_linear` rows) reads tokens through a known nonlinear transform and nothing from
vectors unrelated to their tokens; the oracle probe finds separable labels and not random ones; the
public trunk output is the public model run further, with the device's clip and noise on its input."""

from __future__ import annotations

import pytest
import torch

from splitft.audit.run import AuditReport, _decode, _pooled
from splitft.audit.train import Epoch
from splitft.privacy.config import PrivacyConfig
from splitft.privacy.inversion import TokenSet, fit_linear, public_token_set
from splitft.privacy.labels import oracle_probe
from splitft.privacy.wire_tap import WireTap

VOCAB, DIMS = 20, 16


def _tokens(n: int, seed: int) -> TokenSet:
    """Token vectors of a fixed embedding table plus a little noise (as h_k)."""
    table = torch.randn(VOCAB, DIMS, generator=torch.Generator().manual_seed(99))
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB, (n,), generator=generator)
    return TokenSet(table[tokens] + 0.1 * torch.randn(n, DIMS, generator=generator), tokens)


def _trunk(h: TokenSet) -> TokenSet:
    """A known nonlinear map standing for the trunk: a fixed two-layer tanh network, wider than h."""
    generator = torch.Generator().manual_seed(7)
    first, second = torch.randn(DIMS, 64, generator=generator), torch.randn(64, 32, generator=generator)
    return TokenSet(torch.tanh(torch.tanh(h.hidden @ first / 4) @ second / 8), h.tokens)


def test_the_trunk_decoder_reads_tokens_through_a_known_transform() -> None:
    public, private = _trunk(_tokens(4000, seed=1)), _trunk(_tokens(1000, seed=2))
    unrelated = TokenSet(torch.randn(1000, 32, generator=torch.Generator().manual_seed(3)), private.tokens)
    decoders = {"linear": fit_linear(public)}
    report = AuditReport(privacy={}, accuracy=0.0)
    _decode(report, ("trunk_", "first_epoch"), decoders, (private, public), 0.0)
    _decode(report, ("trunk_", "last_epoch"), decoders, (unrelated, public), 0.0)
    assert report.tokens["trunk_linear@first_epoch"]["top1"] > 0.95
    assert report.tokens["trunk_linear_aligned@first_epoch"]["top1"] > 0.9  # aligning a match moves little
    assert report.tokens["trunk_linear@last_epoch"]["top1"] < 0.15  # chance is 1/20
    assert report.tokens["trunk_linear_aligned@last_epoch"]["top1"] < 0.15
    assert report.token_recovery == report.tokens["trunk_linear@first_epoch"]["top1"]  # in the headline


def test_the_oracle_probe_finds_separable_labels_and_not_random_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centers = torch.randn(4, 32, generator=generator)
    separable = centers[labels] + 0.5 * torch.randn(400, 32, generator=generator)
    assert oracle_probe(separable, labels) > 0.95
    assert oracle_probe(separable, labels, seed=1) > 0.95
    random = oracle_probe(torch.randn(400, 32, generator=generator), labels)
    assert 0.1 < random < 0.4  # chance is 0.25


def test_the_pooled_oracle_input_is_cls_beside_the_mean_over_real_tokens() -> None:
    tap = WireTap()
    tap.returned_hidden = [torch.zeros(1, 3, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 60.0]]])]
    epoch = Epoch(forwards=[1], masks=[torch.tensor([[1, 1, 0]])])  # the third position is padding
    pooled = _pooled(tap.returned_hidden, epoch)
    assert pooled.tolist() == [[1.0, 2.0, 2.0, 3.0]]


@pytest.mark.parametrize(("folds", "n"), [(1, 100), (5, 9)])
def test_the_oracle_probe_refuses_too_few_folds_or_examples(folds: int, n: int) -> None:
    with pytest.raises(ValueError, match="oracle_probe: folds"):
        oracle_probe(torch.randn(n, 4), torch.arange(n) % 2, folds=folds)


@pytest.mark.slow  # the packaged all-MiniLM-L6-v2: a few seconds
def test_the_public_trunk_output_is_the_public_model_run_further() -> None:
    from splitft.demo.sdk import default_model_dir

    model, texts = default_model_dir(), ["Return the sum of two numbers.", "Open a file and read it."]
    deeper = public_token_set(model, texts, 5)
    trunk = public_token_set(model, texts, 2, trunk_blocks=3)
    assert torch.equal(trunk.tokens, deeper.tokens) and torch.allclose(trunk.hidden, deeper.hidden)
    loose = public_token_set(model, texts, 2, trunk_blocks=3, privacy=PrivacyConfig(activation_clip=1e6))
    assert torch.allclose(loose.hidden, deeper.hidden)  # a clip that never bites changes nothing
    noisy = PrivacyConfig(activation_clip=12.0, activation_noise=0.3)
    first = public_token_set(model, texts, 2, trunk_blocks=3, privacy=noisy, seed=1)
    again = public_token_set(model, texts, 2, trunk_blocks=3, privacy=noisy, seed=1)
    other = public_token_set(model, texts, 2, trunk_blocks=3, privacy=noisy, seed=2)
    assert torch.equal(first.hidden, again.hidden) and not torch.allclose(first.hidden, other.hidden)
    assert not torch.allclose(first.hidden, deeper.hidden, atol=1e-2)  # the noise went through the trunk
    with pytest.raises(ValueError, match="trunk_blocks >= 0"):
        public_token_set(model, texts, 2, trunk_blocks=-1)
