"""Fine-tune facts in a plain PyTorch loop, with a phantomlens ``Probe`` deciding when to stop.

    python examples/plain_loop.py                         # SmolLM2-135M, full fine-tuning, 4 facts
    python examples/plain_loop.py --facts my_facts.jsonl --lr 3e-6 --steps 40

The probe measures every watched fact in one batched no-grad pass (the model's modes, gradients
and random numbers are left as they were) and says when every flip is secure: margin ≥
``margin_safe`` for ``patience`` consecutive observations. Its scalars are ready for any logger.
"""

from __future__ import annotations

import argparse

import torch

import phantomlens as pl


def fact_batch(tokenizer, facts: list[pl.Fact], pad_id: int) -> dict:
    """All facts as one right-padded batch, the loss on each target's tokens only."""
    rows = [(e["input_ids"], e["labels"]) for e in pl.fact_examples(tokenizer, facts)]
    width = max(len(ids) for ids, _ in rows)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows]),
    }


def train(model, tokenizer, facts: list[pl.Fact], *, steps: int = 30, lr: float = 3e-6, log=print):
    """Full fine-tuning until every flip is secure (or ``steps``); returns the probe's last observation."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = fact_batch(tokenizer, facts, pad_id)
    probe = pl.Probe(model, tokenizer, facts, pl.StopRule(margin_safe=1.0, patience=3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    observation = probe.observe(0)
    for step in range(1, steps + 1):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        observation = probe.observe(step)
        flipped = sum(r.margin > 0 for r in observation.readouts.values())
        log(f"step {step:3d}  loss {loss.item():.4f}  flipped {flipped}/{len(facts)}")
        if observation.should_stop:
            log(observation.reason)
            break
    return observation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in name or HF model directory")
    parser.add_argument("--facts", default="data/facts.jsonl", help="a fact file (.jsonl or .csv)")
    parser.add_argument("--first", type=int, default=4, help="train the file's first N facts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-6)
    args = parser.parse_args()
    model, tokenizer = pl.load_model(args.model)
    facts = pl.load_facts(args.facts)[: args.first]
    last = train(model, tokenizer, facts, steps=args.steps, lr=args.lr)
    for name, readout in last.readouts.items():
        verdict = "flipped" if readout.margin > 0 else "NOT flipped"
        print(f"{name:<30} margin {readout.margin:+7.3f}  {verdict}")


if __name__ == "__main__":
    main()
