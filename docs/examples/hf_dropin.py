"""The Hugging Face drop-in, end to end on this machine (docs/huggingface.md).

A tiny Llama saved like a real checkpoint, a real edge on a loopback port, then: SplitTrainer with
Trainer's own arguments, save_model, plain peft loading and merging the adapter, generate() with
caches, and a second split model continuing the saved adapter.

Run: .venv/bin/python docs/examples/hf_dropin.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import LlamaForCausalLM, TrainingArguments

from device_client import EdgeConnection, SplitModel, SplitTrainer
from edge_server import EdgeConfig, EdgeServer
from splitft.testing.tiny import save_tiny_model


def main(workdir: Path) -> None:
    tiny = save_tiny_model("llama", workdir / "llama")  # stands in for a downloaded checkpoint
    edge = EdgeServer(EdgeConfig(model_dirs=[f"llama={tiny.path}"], port=0, insecure=True)).start()
    conn = EdgeConnection(edge.address, insecure=True)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = SplitModel.from_pretrained(tiny.path, edge=conn, device_layers=1, head_layers=1, lora_config=lora)

    ids = torch.randint(1, 128, (16, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(workdir / "run"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        num_train_epochs=2, learning_rate=2e-2, lr_scheduler_type="cosine", warmup_steps=1,
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
    )  # fmt: skip
    trainer = SplitTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(str(workdir / "adapter"))  # one standard peft adapter: device + trunk
    losses = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
    sys.stdout.write(f"losses: {losses}\n")

    prompt = {"input_ids": ids[:2, :6], "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    tokens = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny.path), workdir / "adapter")
    merged = merged.merge_and_unload()  # a plain transformers model again
    same = torch.equal(tokens, merged.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=0))
    sys.stdout.write(f"split generate == merged peft generate: {same}\n")
    model.close()

    again = SplitModel.from_pretrained(tiny.path, edge=conn, device_layers=1, adapter=workdir / "adapter")
    sys.stdout.write(f"continued adapter, trainable per side: {again.trainable_parameters()}\n")
    again.close()
    conn.close()
    edge.stop(grace=1)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
