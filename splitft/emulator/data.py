"""Text for distillation: a file of one text per line, or the demo task's docstrings, as batches."""

from __future__ import annotations

from pathlib import Path

from splitft.data.byte_rows import pad_rows
from splitft.emulator.distill import Batch
from splitft.errors import InvalidArgument, NotFound


def read_texts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"--data {path}: no such file")
    try:
        texts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"--data {path} is not UTF-8 text: {exc}") from exc
    if not texts:
        raise InvalidArgument(f"--data {path} has no text (one example per line)")
    return texts


def demo_texts() -> list[str]:
    """The training docstrings of the demo task (splitft.data.stdlib_task)."""
    from splitft.data.stdlib_task import build_stdlib_task

    return [example.text for example in build_stdlib_task().train]


def encode(model_dir: str | Path, texts: list[str], *, batch_size: int, max_length: int) -> list[Batch]:
    """Batches of `texts` with `model_dir`'s tokenizer; a model without one gets one token per UTF-8
    byte (clipped to its vocabulary), as the benchmarks' byte-level causal LM."""
    if batch_size < 1 or max_length < 2:
        raise InvalidArgument("batch_size must be >= 1 and max_length >= 2")
    tokenize = _tokenizer(Path(model_dir), max_length)
    return [tokenize(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]


def _tokenizer(model_dir: Path, max_length: int):  # type: ignore[no-untyped-def]
    has_tokenizer = any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

        def with_tokenizer(batch: list[str]) -> Batch:
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

        return with_tokenizer
    from transformers import AutoConfig

    top = int(AutoConfig.from_pretrained(str(model_dir), local_files_only=True).vocab_size) - 1

    def with_bytes(batch: list[str]) -> Batch:
        rows = [[min(b, top) for b in text.encode()[:max_length]] or [0] for text in batch]
        ids, mask = pad_rows(rows)
        return {"input_ids": ids, "attention_mask": mask}

    return with_bytes
