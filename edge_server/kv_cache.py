"""A session's key/value cache of its trunk blocks, for the device's `generate()`.

Decoding sends the new tokens' activations only; the trunk blocks' keys and values of the tokens
before stay here, per session, in a Hugging Face `DynamicCache` whose layers outside the
session's trunk are `DummyLayer`s (so Hugging Face's mask builder and sequence length read the
first trunk layer, not a block the device runs). Bounded by `--max-cache-tokens` (rows x tokens);
freed when a new generation starts (past_length 0), when the bound would be passed, and with the
session.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.cache_utils import DummyLayer, DynamicCache

from splitft.errors import FailedPrecondition, ResourceExhausted


class SessionKVCache:
    """The trunk blocks' cache of one session's generation in progress (at most one)."""

    def __init__(self, config: PretrainedConfig, trunk_range: range, max_tokens: int) -> None:
        self.config = config
        self.trunk_range = trunk_range
        self.max_tokens = max_tokens
        self.cache: DynamicCache | None = None
        self.rows = 0
        self.length = 0  # tokens per row the cache holds

    def begin(self, past_length: int, rows: int, new_tokens: int) -> DynamicCache:
        """The cache to run `new_tokens` more tokens of `rows` rows on, after `past_length` cached."""
        if past_length == 0:
            self.free()
            self.cache, self.rows = self._new_cache(), rows
        elif self.cache is None:
            raise FailedPrecondition(
                f"the session holds no trunk cache to continue from {past_length} tokens "
                "(a generation starts with past_length 0)"
            )
        elif past_length != self.length or rows != self.rows:
            raise FailedPrecondition(
                f"the session's trunk cache holds {self.length} tokens of {self.rows} rows; this forward "
                f"continues {past_length} tokens of {rows} rows"
            )
        total = rows * (past_length + new_tokens)
        if total > self.max_tokens:
            self.free()
            raise ResourceExhausted(
                f"the trunk cache would hold {rows} x {past_length + new_tokens} = {total} tokens, over this "
                f"edge's limit of {self.max_tokens} per session (--max-cache-tokens); the cache is freed"
            )
        assert self.cache is not None
        return self.cache

    def advanced(self, new_tokens: int) -> None:
        """The forward ran: the cache now holds `new_tokens` more per row."""
        self.length += new_tokens

    def free(self) -> None:
        """Drop the cache (its tensors go with it)."""
        self.cache, self.rows, self.length = None, 0, 0

    @property
    def tokens(self) -> int:
        """Rows x tokens held now."""
        return self.rows * self.length

    def _new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.config)
        for index in range(len(cache.layers)):
            if index not in self.trunk_range:
                cache.layers[index] = DummyLayer()
        return cache
