"""Facts of several tokens in the Probe and the Trainer callback: sequence margins, the readout at the
branch position, one batched pass for all facts, and a probe that never changes training."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FactDataset, log_recorder, make_tiny, tiny_config, tiny_pair, tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from phantomlens import PhantomCallback, Probe, StopRule
from phantomlens.errors import PhantomLensError
from phantomlens.facts import Fact, tokenize_fact
from phantomlens.forward import evaluation, last_token_logits, output_embedding, sequence_margin
from phantomlens.probe import BranchReadout, context_specs
from phantomlens.readout import readout_from_logits

TEXT = "She felt a deep sense of"
FACTS = [
    Fact("The river flows into the", "sea and the", "ocean", "river"),
    Fact("Once upon a time the old man told a long", "story, a long tale", "tale", "tale"),
]
QUANTITIES = ("margin", "p_target", "p_competitor", "phi", "signal", "drag", "loss", "rank_target", "flipped")


def watched(model, tokenizer) -> list:
    """Two multi-token facts and one single-token context."""
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    return [*FACTS, (TEXT, target, competitor)]


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_fact_margins_are_sequence_margins_and_the_readout_is_at_the_branch():
    model, tokenizer = make_tiny("llama")
    items = watched(model, tokenizer)
    probe = Probe(model, tokenizer, items, StopRule(margin_safe=-1e9, patience=5))
    observation = probe.observe(0)
    assert list(observation.readouts) == ["river", "tale", TEXT]  # the order watched
    unembedding = output_embedding(model)
    for fact in FACTS:
        tokenized = tokenize_fact(tokenizer, fact)
        readout = observation.readouts[fact.name]
        assert isinstance(readout, BranchReadout)
        with evaluation(model):
            margin = sequence_margin(
                model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids
            )
            logits = last_token_logits(model, torch.tensor([tokenized.branch_prefix]))
        assert readout.margin == pytest.approx(float(margin), abs=1e-4)
        assert readout.margin == pytest.approx(readout.logp_target - readout.logp_competitor, abs=1e-12)
        single, _ = readout_from_logits(
            logits, unembedding, tokenized.target_id, tokenized.competitor_id, with_spectrum=False
        )
        for key in ("phi", "signal", "drag", "p_target", "p_competitor", "overlap_tc"):
            assert getattr(readout, key) == pytest.approx(getattr(single, key), abs=1e-6), key
        assert readout.rank_target == single.rank_target
        assert readout.margin_branch == pytest.approx(single.margin, abs=1e-4)


def test_the_context_keeps_its_scalars_and_facts_log_per_name():
    model, tokenizer = make_tiny("llama")
    items = watched(model, tokenizer)
    mixed = Probe(model, tokenizer, items).observe(0).scalars()
    alone = Probe(model, tokenizer, items[-1:]).observe(0).scalars()
    assert {k: v for k, v in mixed.items() if f"/{TEXT}/" in k} == {
        k: v for k, v in alone.items() if f"/{TEXT}/" in k
    }  # byte-identical to a probe that watches the context alone
    assert f"phantom/{TEXT}/logp_target" not in mixed
    for name in ("river", "tale"):
        assert {f"phantom/{name}/{q}" for q in (*QUANTITIES, "logp_target", "margin_branch")} <= set(mixed)
    assert mixed["phantom/all_flipped"] == float(
        all(mixed[f"phantom/{n}/margin"] > 0 for n in ("river", "tale", TEXT))
    )


def test_all_facts_are_read_in_one_batched_pass():
    model, tokenizer = make_tiny("llama")
    many = [Fact(f.prompt, f.target, f.competitor, f"{f.name}{i}") for i in range(5) for f in FACTS]
    tails = any(len(t.competitor_ids) > t.branch + 1 for t in (tokenize_fact(tokenizer, f) for f in many))
    probe = Probe(model, tokenizer, [*many, *watched(model, tokenizer)[-1:]])
    calls = count_forwards(model)
    probe.observe(0)
    assert calls[0] == 1 + 1 + tails  # the context, one pass for all ten facts, their competitor tails


def test_a_context_with_several_tokens_is_watched_as_a_fact():
    model, tokenizer = make_tiny("llama")
    as_dict = {
        "name": "weather",
        "text": "The weather today is very",
        "target": "cold, chilly",
        "competitor": "grey",
    }
    as_fact = {
        "name": "weather",
        "prompt": "The weather today is very",
        "target": "cold, chilly",
        "competitor": "grey",
    }
    first = Probe(model, tokenizer, [as_dict]).observe(0).readouts["weather"]
    second = Probe(model, tokenizer, [as_fact]).observe(0).readouts["weather"]
    assert isinstance(first, BranchReadout) and first == second
    specs = context_specs([FACTS[0], as_dict])  # JSON-ready, and a fact spec round-trips
    assert specs[0] == {"name": "river", **{k: v for k, v in FACTS[0].to_dict().items() if k != "name"}}
    assert Probe(model, tokenizer, specs[:1]).observe(0).readouts["river"].margin == pytest.approx(
        Probe(model, tokenizer, FACTS[:1]).observe(0).readouts["river"].margin
    )


def test_facts_on_a_peft_model():
    from peft import LoraConfig, get_peft_model

    model, tokenizer = make_tiny("llama")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    readout = Probe(model, tokenizer, FACTS[:1]).observe(0).readouts["river"]
    tokenized = tokenize_fact(tokenizer, FACTS[0])
    with evaluation(model):
        margin = sequence_margin(model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids)
    assert readout.margin == pytest.approx(float(margin), abs=1e-4)


def test_fact_errors():
    model, tokenizer = make_tiny("llama")
    with pytest.raises(PhantomLensError, match="no competitor"):
        Probe(model, tokenizer, [{"text": TEXT, "target": "sea and the"}])
    with pytest.raises(PhantomLensError, match="named 'river'"):
        Probe(model, tokenizer, [FACTS[0], Fact("The river flows into", "the sea", "an ocean", "river")])
    with pytest.raises(PhantomLensError, match="micro_batch"):
        Probe(model, tokenizer, FACTS, micro_batch=0)


def test_observing_facts_is_non_destructive():
    model, tokenizer = make_tiny("llama")
    model.train()
    model.model.layers[0].eval()  # mixed modes: each module's own mode must come back
    items = watched(model, tokenizer)
    ids = torch.tensor([tokenizer.encode(TEXT + " sea and the")])
    model(input_ids=ids, labels=ids).loss.backward()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    rng = torch.get_rng_state()
    probe = Probe(model, tokenizer, items)
    probe.observe(0)
    probe.observe(1)
    assert torch.equal(rng, torch.get_rng_state())
    assert modes == {k: m.training for k, m in model.named_modules()}
    assert all(
        torch.equal(params[k], v) and torch.equal(grads[k], v.grad) for k, v in model.named_parameters()
    )
    assert torch.is_grad_enabled()


def trainer_for(model, tokenizer, out, max_steps=30, lr=5e-3, logging_steps=1000):
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=logging_steps,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
    )
    dataset = FactDataset(tokenizer, FACTS[0])
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[log_recorder()],
        data_collator=default_data_collator,
    )


def test_callback_logs_every_fact_and_stops_on_a_secure_set(tmp_path):
    model, tokenizer = make_tiny("llama")
    items = watched(model, tokenizer)
    trainer = trainer_for(model, tokenizer, tmp_path / "secure", logging_steps=1)
    callback = PhantomCallback.attach(trainer, items, rule=StopRule(margin_safe=-1e9, patience=3))
    trainer.train()
    # Observations at steps 0 (before training), 1 and 2 are secure: training stops after step 2.
    assert trainer.state.global_step == 2 and "flip secure at step 2" in callback.stop_reason
    recorder = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "LogRecorder")
    seen = [log for log in recorder.logs if "phantom/river/margin" in log]
    assert len(seen) == 2 and seen[-1]["phantom/stopped"] == 1.0
    for name in ("river", "tale", TEXT):
        assert all(f"phantom/{name}/margin" in log for log in seen)
    assert "phantom/tale/logp_competitor" in seen[0] and "phantom/secure_steps" in seen[0]


def test_training_on_a_fact_stops_when_its_sequence_margin_is_secure(tmp_path):
    model, tokenizer = make_tiny("llama")
    trainer = trainer_for(model, tokenizer, tmp_path / "flip", max_steps=60, lr=1e-2)
    callback = PhantomCallback.attach(trainer, FACTS[:1], rule=StopRule(margin_safe=0.5, patience=2))
    trainer.train()
    assert trainer.state.global_step < 60, "the fact should have flipped and stopped training"
    margins = [observation.readouts["river"].margin for observation in callback.history]
    assert margins[0] < 0 and all(m >= 0.5 for m in margins[-2:])
    tokenized = tokenize_fact(tokenizer, FACTS[0])
    with evaluation(model):
        final = sequence_margin(model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids)
    assert margins[-1] == pytest.approx(float(final), abs=1e-4)  # the stop was on the sequence margin
    assert "river" in callback.stop_reason


def test_a_facts_probe_never_changes_training(tmp_path):
    def train(with_probe: bool):
        tokenizer = tiny_tokenizer()
        config = tiny_config("llama", len(tokenizer))
        config.attention_dropout = 0.2  # so that any stray use of the RNG would change training
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.train()
        trainer = trainer_for(model, tokenizer, tmp_path / f"p{with_probe}", max_steps=6)
        if with_probe:
            PhantomCallback.attach(trainer, [*FACTS, "shame"], rule=StopRule(margin_safe=1e9, patience=1))
        trainer.train()
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, probed = train(False), train(True)
    assert all(torch.equal(plain[k], probed[k]) for k in plain)
