"""`splitft bench fewshot`: TinyTrain in its paper's regime (few-shot episodes of unseen classes,
under a memory and a MAC budget) against last-layer-only and full fine-tuning. See `run.py`."""

from splitft.bench.fewshot.config import METHODS, QUICK, FewshotBenchConfig
from splitft.bench.fewshot.run import markdown_table, run_fewshot_bench

__all__ = ["METHODS", "QUICK", "FewshotBenchConfig", "markdown_table", "run_fewshot_bench"]
