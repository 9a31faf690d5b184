"""`splitft bench vit`: TaskEdge in its paper's regime (a pretrained ViT fine-tuned on small
held-out tasks, VTAB-1k style, at 0.05%, 0.1% and 0.5% of the backbone's parameters) against LoRA
at the same budget, random and |W|-only selection (TaskEdge's ablations), the head alone and every
weight.

No model hub: `backbone` builds a small ViT from a config and pretrains it on digits 0-4 of
scikit-learn's bundled digits, cached by config and seed; `data` holds the held-out tasks on digits
5-9 (under 1,000 training images each); `budgets` TaskEdge's targets, k and the matched LoRA shape;
`finetune` one run; `run` the plan and the report.
"""

from splitft.bench.vit.config import METHODS, QUICK, VitBenchConfig
from splitft.bench.vit.run import markdown_table, run_vit_bench

__all__ = ["METHODS", "QUICK", "VitBenchConfig", "markdown_table", "run_vit_bench"]
