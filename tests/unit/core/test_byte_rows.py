"""`pad_rows`, which the byte-level encoders (bench fewshot, bench methods, the emulator) share:
every row right-padded to the longest with the pad id, the mask 1 exactly on a row's own tokens."""

from __future__ import annotations

import torch

from splitft.bench.fewshot.data import CLS_ID, encode
from splitft.bench.methods.data import encode_bytes
from splitft.data.byte_rows import pad_rows


def test_rows_are_right_padded_with_the_pad_id_and_masked() -> None:
    ids, mask = pad_rows([[5, 6, 7], [8], []], pad_id=3)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 3, 3], [3, 3, 3]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert pad_rows([[1, 2]])[0].tolist() == [[1, 2]]  # the default pad id (0) only where rows differ
    assert pad_rows([[9], [1, 2]])[0].tolist() == [[9, 0], [1, 2]]


def test_the_encoders_pad_through_it() -> None:
    texts = ["ab", "é", "longer text"]
    lm = encode_bytes(texts, max_length=4)
    assert lm["input_ids"].tolist() == [[97, 98, 0, 0], [127, 127, 0, 0], [108, 111, 110, 103]]
    assert lm["labels"].tolist() == [[97, 98, -100, -100], [127, 127, -100, -100], [108, 111, 110, 103]]
    cls = encode(texts, [0, 1, 2], max_length=3)
    assert cls["input_ids"].tolist() == [[CLS_ID, 97, 98], [CLS_ID, 127, 127], [CLS_ID, 108, 111]]
    assert cls["attention_mask"].tolist() == [[1, 1, 1]] * 3 and cls["labels"].tolist() == [0, 1, 2]
