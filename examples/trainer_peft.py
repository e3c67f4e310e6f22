"""Fine-tune facts with the Hugging Face Trainer and PEFT LoRA, watched by phantomlens.

    python examples/trainer_peft.py                       # SmolLM2-135M, 8 facts of data/facts.jsonl
    python examples/trainer_peft.py --facts my_facts.jsonl --lr 1e-3 --steps 30 --out runs/mine

``PhantomCallback`` goes in ``callbacks=[...]`` like any other callback. It logs
``phantom/<fact>/<quantity>`` at the Trainer's ``logging_steps`` (to every ``report_to``
integration), stops training once every fact's flip is secure, and at the end logs each fact's
verdict (flipped, silent failure, kinematic, structural) and writes a run directory
(``<out>/phantomlens``) that ``phantomlens analyze`` and ``phantomlens report`` read.
"""

from __future__ import annotations

import argparse
import logging

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

import phantomlens as pl


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; padded positions get no loss and no attention."""
    width = max(len(item["input_ids"]) for item in batch)

    def pad(values, fill):
        return torch.tensor([v + [fill] * (width - len(v)) for v in values])

    ids = [item["input_ids"] for item in batch]
    return {
        "input_ids": pad(ids, pad_id),
        "attention_mask": pad([[1] * len(v) for v in ids], 0),
        "labels": pad([item["labels"] for item in batch], -100),
    }


def train(model, tokenizer, facts: list[pl.Fact], out: str, *, steps: int = 20, lr: float = 1e-3):
    """LoRA fine-tuning of ``facts``; returns the callback (its ``result`` and ``verdicts``)."""
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM"))
    callback = pl.PhantomCallback(facts, rule=pl.StopRule(margin_safe=1.0, patience=3))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=len(facts),  # every fact in every step, as phantomlens runs do
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 10),
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=pl.fact_examples(tokenizer, facts),  # a list is a valid dataset
        processing_class=tokenizer,
        data_collator=lambda batch: collate(batch, pad_id),
        callbacks=[callback],
    )
    trainer.train()
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in name or HF model directory")
    parser.add_argument("--facts", default="data/facts.jsonl", help="a fact file (.jsonl or .csv)")
    parser.add_argument("--first", type=int, default=8, help="train the file's first N facts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="runs/trainer-peft")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # shows the verdict table
    model, tokenizer = pl.load_model(args.model)
    facts = pl.load_facts(args.facts)[: args.first]
    callback = train(model, tokenizer, facts, args.out, steps=args.steps, lr=args.lr)
    summary = callback.result.summary
    print(
        f"{summary.n_flipped}/{summary.n_facts} flipped; silent failures: {summary.silent_failures or 'none'}"
    )
    print(f"run directory: {callback.result.out_dir}  (phantomlens report {callback.result.out_dir})")


if __name__ == "__main__":
    main()
