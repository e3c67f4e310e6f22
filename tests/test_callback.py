"""PhantomCallback as a first-class Hugging Face TrainerCallback: passed in ``callbacks=[...]`` it
reaches every ``report_to`` integration, honours ``logging_steps``, resumes from checkpoints, gives
verdicts at the end and exports a run directory; bad input fails at ``on_train_begin``."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_models import FactDataset, log_recorder, make_tiny, tiny_tokenizer
from transformers import Trainer, TrainingArguments, default_data_collator

from phantomlens import FactSetResult, PhantomCallback, StopRule
from phantomlens.errors import PhantomLensError
from phantomlens.facts import Fact, tokenize_fact
from phantomlens.forward import evaluation, sequence_margin

FACTS = [
    Fact("The river flows into the", "sea and the", "ocean", "river"),
    Fact("Once upon a time the old man told a long", "story, a long tale", "tale", "tale"),
]


def trainer(model, tokenizer, out, callbacks, *, steps=10, lr=5e-3, **extra):
    settings = {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "logging_steps": 5,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "save_strategy": "no",
        **extra,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=FactDataset(tokenizer, FACTS[0]),
        processing_class=tokenizer,
        callbacks=callbacks,
        data_collator=default_data_collator,
    )


def never_stops() -> StopRule:
    return StopRule(margin_safe=1e9, patience=1)


def test_passed_in_callbacks_it_reaches_integrations_at_the_trainers_logging_steps(tmp_path):
    model, tokenizer = make_tiny("llama")
    stand_in, callback = log_recorder(), PhantomCallback(FACTS, rule=never_stops())
    run = trainer(model, tokenizer, tmp_path / "t", [stand_in, callback])  # the integration first
    run.train()
    logged = [log for log in stand_in.logs if "phantom/river/margin" in log]
    assert len(logged) == 2  # steps 5 and 10: logging_steps=5, not every step
    steps = [e["step"] for e in run.state.log_history if "phantom/river/margin" in e]
    assert steps == [5, 10]
    assert [o.step for o in callback.history] == list(range(11))  # observed every step for the rule
    closing = stand_in.logs[-1]
    assert closing["phantom/n_flipped"] + 0 == callback.result.summary.n_flipped
    assert "phantom/fraction_flipped" in closing and "phantom/n_silent_failures" in closing
    # The logged value is the observation of the logged step.
    at_ten = next(o for o in callback.history if o.step == 10).readouts["river"].margin
    assert logged[-1]["phantom/river/margin"] == pytest.approx(at_ten)


def test_tensorboard_receives_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, tokenizer = make_tiny("llama")
    logs = tmp_path / "t"  # the integration writes under output_dir by default
    run = trainer(
        model, tokenizer, logs, [PhantomCallback(FACTS, rule=never_stops())], report_to=["tensorboard"]
    )
    run.train()
    (events,) = [p.parent for p in logs.rglob("events.out.tfevents.*")]
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    # The integration files a training log under train/, as it does the loss.
    assert {"train/phantom/river/margin", "train/phantom/tale/drag", "train/loss"} <= set(tags)


def test_verdicts_at_the_end_a_warning_for_silent_failures_and_a_run_directory(tmp_path, caplog):
    model, tokenizer = make_tiny("llama")
    callback = PhantomCallback(FACTS, rule=never_stops())
    run = trainer(model, tokenizer, tmp_path / "t", [callback], steps=8, lr=1e-5)  # far too small
    with caplog.at_level(logging.INFO, logger="phantomlens"):
        run.train()
    summary = callback.result.summary
    assert summary.n_facts == 2 and summary.steps_completed == 8
    assert set(callback.verdicts["name"]) == {"river", "tale"}
    assert "facts flipped" in caplog.text and "margin start → end" in caplog.text
    for fact in summary.facts:
        assert fact.outcome in ("success", "kinematic", "structural")
    silent = summary.silent_failures
    if silent:
        assert any("silent failure" in r.message and silent[0] in r.message for r in caplog.records)
    out = tmp_path / "t" / "phantomlens"
    loaded = FactSetResult.load(out)
    assert loaded.summary.facts == summary.facts
    assert sorted(loaded.trajectory["step"].unique()) == list(range(9))
    assert {"dphi_1", "readout_1", "geometric_1", "cross_1"} <= set(loaded.trajectory.columns)
    assert loaded.config.lr == 1e-5 and loaded.config.schedule == "constant"
    assert any("PhantomCallback" in note for note in loaded.summary.notes)
    from phantomlens.cli import main

    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0


def test_a_second_training_replaces_its_own_export_but_nothing_else(tmp_path):
    model, tokenizer = make_tiny("llama")
    for _ in range(2):
        trainer(model, tokenizer, tmp_path / "t", [PhantomCallback(FACTS[:1])], steps=2).train()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    run = trainer(model, tokenizer, tmp_path / "t", [PhantomCallback(FACTS[:1], out=str(other))], steps=2)
    with pytest.raises(PhantomLensError, match="not a phantomlens run directory"):
        run.train()
    assert run.state.global_step == 0 and (other / "notes.txt").read_text() == "keep me"


def test_resumes_its_trajectory_and_counter_from_a_checkpoint(tmp_path):
    model, tokenizer = make_tiny("llama")
    rule = StopRule(margin_safe=-1e9, patience=100)  # secure at every step, never stops
    out = tmp_path / "ckpt"
    saving = {"save_strategy": "steps", "save_steps": 6}
    first = trainer(model, tokenizer, out, [PhantomCallback(FACTS, rule=rule)], steps=6, **saving)
    first.train()
    assert (out / "checkpoint-6" / "phantomlens-trajectory.parquet").is_file()
    model, _ = make_tiny("llama")
    callback = PhantomCallback(FACTS, rule=rule)
    second = trainer(model, tokenizer, out, [callback], steps=8, restore_callback_states_from_checkpoint=True)
    second.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    # ExportableState: the Trainer rebuilt the callback from the checkpoint's state.
    restored = next(cb for cb in second.callback_handler.callbacks if isinstance(cb, PhantomCallback))
    assert restored.secure_steps == 9  # steps 0…6 before the checkpoint, 7 and 8 after
    assert restored.rule == rule
    trajectory = FactSetResult.load(out / "phantomlens").trajectory
    assert sorted(trajectory["step"].unique()) == list(range(9))


def test_mixed_precision_keeps_the_readout_in_fp32(tmp_path):
    model, tokenizer = make_tiny("llama")
    callback = PhantomCallback(FACTS[:1], rule=never_stops())
    run = trainer(model, tokenizer, tmp_path / "t", [callback], steps=3, bf16=True)
    run.train()
    tokenized = tokenize_fact(tokenizer, FACTS[0])
    with evaluation(model):
        final = sequence_margin(model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids)
    assert callback.history[-1].readouts["river"].margin == pytest.approx(float(final), abs=1e-5)
    assert any("bf16 mixed precision" in note for note in callback.result.summary.notes)


def test_bad_input_fails_at_train_begin_before_any_step(tmp_path):
    model, tokenizer = make_tiny("llama")
    cases = [
        (PhantomCallback(FACTS), None, "needs a tokenizer"),
        (
            PhantomCallback([Fact("The river flows into the", "sea", "sea and", "prefix")]),
            tokenizer,
            "prefix",
        ),
        (PhantomCallback(FACTS, tokenizer=_foreign_tokenizer()), tokenizer, "does not belong to this model"),
    ]
    for callback, given, message in cases:
        run = trainer(model, tokenizer, tmp_path / "t", [callback], steps=2)
        run.processing_class = run.callback_handler.processing_class = given
        with pytest.raises(PhantomLensError, match=message):
            run.train()
        assert run.state.global_step == 0
    headless = torch.nn.Module()
    headless.get_output_embeddings = lambda: None
    from phantomlens.callbackrun import begin

    with pytest.raises(PhantomLensError, match="no output embedding"):
        begin(PhantomCallback(FACTS), run.args, run.state, headless, tokenizer)


def _foreign_tokenizer():
    """A tokenizer with ids beyond the tiny model's vocabulary."""
    tokenizer = tiny_tokenizer()

    class Foreign:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def encode(self, text, add_special_tokens=True):
            return [i + 10_000 for i in tokenizer.encode(text, add_special_tokens=add_special_tokens)]

    return Foreign()


def test_sft_trainer_from_trl(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model, tokenizer = make_tiny("llama")
    tokenizer.pad_token = tokenizer.eos_token
    data = Dataset.from_list([{"text": "The river flows into the sea and the ocean."}] * 16)
    config = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=4,
        per_device_train_batch_size=2,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    callback = PhantomCallback(FACTS, rule=never_stops())
    stand_in = log_recorder()
    trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[stand_in, callback],
    ).train()
    assert [o.step for o in callback.history] == list(range(5))
    assert sum("phantom/river/margin" in log for log in stand_in.logs) == 2
    assert callback.result.summary.n_facts == 2


def test_predicts_critical_lrs_for_the_trainers_schedule_and_changes_nothing(tmp_path, caplog):
    def weights_after(predict: bool):
        model, tokenizer = make_tiny("llama")
        callback = PhantomCallback(FACTS, rule=never_stops(), predict=predict, export=False)
        run = trainer(model, tokenizer, tmp_path / f"p{predict}", [callback], steps=3, lr=1e-6,
                      lr_scheduler_type="linear", warmup_steps=1)  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="phantomlens"):
            run.train()
        return callback, torch.cat([p.detach().flatten() for p in model.parameters()])

    callback, with_prediction = weights_after(True)
    _, without = weights_after(False)
    assert torch.equal(with_prediction, without)  # the prediction works on a private copy
    assert [p.name for p in callback.predictions] == ["river", "tale"]
    behind = [p for p in callback.predictions if p.margin_initial < 0]
    assert behind, "the tiny model should start with some fact behind"
    for p in behind:
        assert p.eta_c_joint is None or p.eta_c_joint > 1e-6
        assert f"fact {p.name!r} is predicted not to flip" in caplog.text


def test_the_trainers_schedule_is_read_from_its_scheduler():
    from transformers import get_linear_schedule_with_warmup

    from phantomlens.callbackrun import trainer_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=10)
    factors = trainer_schedule(scheduler, 10, fallback=[1.0] * 10)
    assert factors[:3] == [0.0, 0.5, 1.0] and factors[-1] == pytest.approx(0.125)
    assert trainer_schedule(object(), 3, fallback=[1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]


def test_quantities_choose_the_logged_scalars_and_the_table_fits_its_content(tmp_path, caplog):
    model, tokenizer = make_tiny("llama")
    stand_in = log_recorder()
    callback = PhantomCallback(FACTS, rule=never_stops(), quantities=["margin", "flipped"], export=False)
    with caplog.at_level(logging.INFO, logger="phantomlens"):
        trainer(model, tokenizer, tmp_path / "t", [stand_in, callback], steps=5).train()
    logged = next(log for log in stand_in.logs if "phantom/river/margin" in log)
    per_fact = {key.split("/")[-1] for key in logged if key.startswith("phantom/river/")}
    assert per_fact == {"margin", "flipped"} and "phantom/all_flipped" in logged
    table = next(r.message for r in caplog.records if "facts flipped" in r.message).splitlines()[1:]
    starts = {line.index("→") for line in table[1:]}
    assert len(starts) == 1  # the margin column lines up whatever the verdict's length
    with pytest.raises(PhantomLensError, match="unknown quantities"):
        PhantomCallback(FACTS, quantities=["margn"])


def test_hostile_settings_are_refused_before_any_step_or_recorded_plainly(tmp_path):
    model, tokenizer = make_tiny("llama")
    out = tmp_path / "t"
    own_dir = trainer(model, tokenizer, out, [PhantomCallback(FACTS, out=str(out))], steps=2)
    with pytest.raises(PhantomLensError, match="would replace the Trainer's output_dir"):
        own_dir.train()
    no_lr = trainer(model, tokenizer, tmp_path / "z", [PhantomCallback(FACTS)], steps=2, lr=0.0)
    with pytest.raises(PhantomLensError, match="settings cannot be recorded"):
        no_lr.train()
    assert own_dir.state.global_step == no_lr.state.global_step == 0
    callback = PhantomCallback(FACTS, rule=never_stops())
    trainer(model, tokenizer, tmp_path / "w", [callback], steps=3, lr_scheduler_type="cosine_with_restarts",
            warmup_steps=10).train()  # fmt: skip
    notes = callback.result.summary.notes
    assert any("cosine_with_restarts is recorded as constant" in n for n in notes)
    assert any("warm-up covers every step" in n for n in notes)
    for bad, message in [
        ({"contexts": None}, "must be a list"),
        ({"contexts": [None]}, "watched item 1"),
        ({"contexts": [("a",)]}, "watched item 1"),
        ({"contexts": [{"prompt": "x"}]}, "watched item 1"),
        ({"contexts": FACTS, "rule": "garbage"}, "rule must be a StopRule"),
        ({"contexts": FACTS, "every": 1.5}, "every must be a whole number"),
    ]:
        with pytest.raises(PhantomLensError, match=message):
            PhantomCallback(**bad)


def test_a_blown_up_run_is_diverged_and_a_reused_callback_starts_afresh(tmp_path):
    model, tokenizer = make_tiny("llama")
    callback = PhantomCallback(FACTS, rule=never_stops())
    trainer(model, tokenizer, tmp_path / "a", [callback], steps=6, lr=1e3).train()
    assert callback.result.summary.status == "diverged" and "cut-off" in callback.stop_reason
    model, _ = make_tiny("llama")
    trainer(model, tokenizer, tmp_path / "b", [callback], steps=3, lr=1e-4).train()
    assert [o.step for o in callback.history] == [0, 1, 2, 3]
    assert callback.result.summary.status == "completed" and callback.stop_reason == ""
    assert FactSetResult.load(tmp_path / "b" / "phantomlens").summary.steps_completed == 3


def test_resuming_from_a_moved_checkpoint_or_with_other_facts(tmp_path):
    import shutil

    model, tokenizer = make_tiny("llama")
    out = tmp_path / "first"
    saving = {"save_strategy": "steps", "save_steps": 4}
    trainer(model, tokenizer, out, [PhantomCallback(FACTS, rule=never_stops())], steps=4, **saving).train()
    moved = tmp_path / "elsewhere" / "my-checkpoint"
    shutil.copytree(out / "checkpoint-4", moved)
    for watched, steps in ((FACTS, list(range(7))), (FACTS[:1], [4, 5, 6])):
        model, _ = make_tiny("llama")
        callback = PhantomCallback(watched, rule=never_stops())
        second = trainer(model, tokenizer, tmp_path / f"second{len(watched)}", [callback], steps=6)
        second.train(resume_from_checkpoint=str(moved))
        assert sorted(callback.result.trajectory["step"].unique()) == steps
        FactSetResult.load(tmp_path / f"second{len(watched)}" / "phantomlens")  # consistent on disk
    assert any("other facts" in n for n in callback.result.summary.notes)
