"""Early stopping: the plain-loop Probe, the runner's --early-stop, and the Trainer callback."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny, tiny_pair, tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from phantomlens import PhantomCallback, Probe, StopRule, finetune
from phantomlens.errors import PhantomLensError

TEXT = "She felt a deep sense of"


class Dataset(torch.utils.data.Dataset):
    """One context repeated: the loss is −log p(target | context), as in phantomlens runs."""

    def __init__(self, tokenizer, target: str, length: int = 64):
        ids = tokenizer.encode(TEXT) + tokenizer.encode(target)
        self.item = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "labels": torch.tensor([-100] * (len(ids) - 1) + [ids[-1]]),
        }
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.item


class Recorder(TrainerCallback):
    """Stands in for a report_to integration: records what reaches on_log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def dropout_model(seed=0):
    from tiny_models import tiny_config

    config = tiny_config("llama", len(tiny_tokenizer()))
    config.attention_dropout = 0.2  # so that any stray use of the RNG would change training
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def trainer_for(model, tokenizer, target, out, max_steps=30, lr=5e-3, **extra):
    settings = {"save_strategy": "no", **extra}
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1000,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **settings,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=Dataset(tokenizer, target),
        processing_class=tokenizer,
        callbacks=[Recorder()],
        data_collator=default_data_collator,
    )


def test_plain_loop_probe():
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    probe = Probe(model, tokenizer, [(TEXT, target, competitor)], StopRule(margin_safe=-100, patience=2))
    first = probe.observe(0)
    assert not first.should_stop and first.secure_steps == 1
    second = probe.observe(1)
    assert second.should_stop and "flip secure at step 1" in second.reason
    assert set(second.scalars()) >= {f"phantom/{TEXT}/margin", "phantom/all_flipped", "phantom/secure_steps"}
    state = probe.state_dict()
    fresh = Probe(model, tokenizer, [(TEXT, target, competitor)])
    fresh.load_state_dict(state)
    assert fresh.secure_steps == 2
    with pytest.raises(PhantomLensError, match="patience"):
        Probe(model, tokenizer, ["shame"], StopRule(patience=0))


def test_runner_early_stop():
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    result = finetune(
        model=model,
        tokenizer=tokenizer,
        context=TEXT,
        target=target,
        competitor=competitor,
        lr=2e-2,
        steps=40,
        schedule="constant",
        early_stop=True,
        margin_safe=0.5,
        patience=2,
        progress=False,
    )
    s, t = result.summary, result.trajectory
    assert s.stopped_early and s.steps_completed < 40 and "flip secure" in s.stop_reason
    assert (t["margin"].iloc[-3:-1] >= 0.5).all()  # the two secure steps before stopping
    assert s.outcome == "success"


def test_callback_stops_logs_through_the_trainer_and_works_with_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    for peft in (False, True):
        model, tokenizer = make_tiny("llama")
        target, _ = tiny_pair(model, tokenizer, TEXT)
        if peft:
            model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        trainer = trainer_for(model, tokenizer, target, tmp_path / f"run{peft}", lr=3e-2 if peft else 5e-3)
        callback = PhantomCallback.attach(trainer, ["shame"], rule=StopRule(margin_safe=0.5, patience=2))
        trainer.train()
        assert trainer.state.global_step < 30, "the flip should have stopped training"
        assert "flip secure" in callback.stop_reason
        recorder = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, Recorder))
        seen = [log for log in recorder.logs if "phantom/shame/margin" in log]
        assert seen and seen[-1]["phantom/stopped"] == 1.0  # the integration got the scalars
        assert any("phantom/shame/margin" in entry for entry in trainer.state.log_history)


def test_callback_resumes_its_counter_from_a_checkpoint(tmp_path):
    model, tokenizer = make_tiny("llama")
    target, _ = tiny_pair(model, tokenizer, TEXT)
    out = tmp_path / "ckpt"
    first = trainer_for(model, tokenizer, target, out, max_steps=6, save_strategy="steps", save_steps=6)
    PhantomCallback.attach(
        first, ["shame"], rule=StopRule(margin_safe=-1e9, patience=100)
    )  # secure at once, never stops
    first.train()
    model, _ = make_tiny("llama")
    second = trainer_for(model, tokenizer, target, out, max_steps=8)
    callback = PhantomCallback.attach(second, ["shame"], rule=StopRule(margin_safe=-1e9, patience=100))
    second.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert callback.secure_steps == 9  # steps 0…6 before the checkpoint + 7 and 8 after, not 2


def test_probe_never_changes_training(tmp_path):
    def train(with_probe: bool):
        tokenizer = tiny_tokenizer()
        model = dropout_model()
        model.train()
        target = " shame"
        trainer = trainer_for(model, tokenizer, target, tmp_path / f"p{with_probe}", max_steps=8)
        if with_probe:
            PhantomCallback.attach(
                trainer, ["shame"], rule=StopRule(margin_safe=1e9, patience=1)
            )  # never stops
        trainer.train()
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, probed = train(False), train(True)
    assert all(torch.equal(plain[k], probed[k]) for k in plain)
