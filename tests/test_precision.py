"""bf16 runs: the body under autocast, the LM head, logits and readout in fp32, said in the notes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens import finetune
from phantomlens.precision import NOTE, mixed_precision

TEXT = "She felt a deep sense of"


def test_the_body_runs_in_bf16_and_the_head_in_fp32_and_the_model_is_left_clean():
    model, tokenizer = make_tiny("llama")
    ids = torch.tensor([tokenizer.encode(TEXT)])
    seen = {}
    body = model.model.layers[0].self_attn.q_proj
    body.register_forward_hook(lambda m, i, o: seen.__setitem__("body", o.dtype))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with mixed_precision(model, "bf16"):
            logits = model(input_ids=ids).logits
    assert seen["body"] == torch.bfloat16 and logits.dtype == torch.float32
    assert torch.allclose(logits, reference, atol=0.1)  # bf16 body: close, not equal
    assert not model.get_output_embeddings()._forward_hooks  # the hook is gone
    with torch.no_grad(), mixed_precision(model, "fp32"):
        assert torch.equal(model(input_ids=ids).logits, reference)


@pytest.mark.parametrize("facts", [False, True])
def test_a_bf16_run_completes_and_says_so(facts, tmp_path):
    model, tokenizer = make_tiny("llama")
    if facts:
        what = {"context": "The river flows into the", "target": "sea and the", "competitor": "ocean"}
    else:
        target, competitor = tiny_pair(model, tokenizer, TEXT)
        what = {"context": TEXT, "target": target, "competitor": competitor}
    result = finetune(model=model, tokenizer=tokenizer, steps=3, lr=1e-3, precision="bf16", progress=False,
                      out=tmp_path / "run", **what)  # fmt: skip
    assert NOTE in result.summary.notes and result.summary.status == "completed"
    assert result.config.precision == "bf16"
    assert not model.get_output_embeddings()._forward_hooks


def test_predict_for_a_bf16_run_says_what_it_misses_and_leaves_the_calibrations_domain():
    from phantomlens import predict_critical_lr
    from phantomlens.kappa import choose_kappa
    from phantomlens.predict import BF16_NOTE
    from phantomlens.settings import RunConfig

    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    what = {"context": TEXT, "target": target, "competitor": competitor, "mode": "lora"}
    plain = predict_critical_lr(model=model, tokenizer=tokenizer, **what)
    bf16 = predict_critical_lr(model=model, tokenizer=tokenizer, precision="bf16", **what)
    assert plain.precision_note is None and bf16.precision_note == BF16_NOTE
    assert bf16.margin_initial != plain.margin_initial  # m_0 measured as the bf16 run sees it
    assert not model.get_output_embeddings()._forward_hooks
    inside = choose_kappa(None, None, RunConfig(mode="lora"), "two-point", shipped=True)
    outside = choose_kappa(None, None, RunConfig(mode="lora", precision="bf16"), "two-point", shipped=True)
    assert inside.note.startswith("inside") and outside.value == 1.0
    assert outside.note.startswith("outside") and "bf16" in outside.note


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_bf16_run_sees_its_own_updates_and_tracks_fp32(mode):
    def margins(precision):
        model, tokenizer = make_tiny("llama")
        target, competitor = tiny_pair(model, tokenizer, TEXT)
        what = {"context": TEXT, "target": target, "competitor": competitor, "mode": mode}
        result = finetune(model=model, tokenizer=tokenizer, steps=4, lr=1e-2, schedule="constant",
                          precision=precision, progress=False, **what)  # fmt: skip
        return result.trajectory["margin"].to_numpy()

    fp32, bf16 = margins("fp32"), margins("bf16")
    assert abs(bf16[-1] - bf16[0]) > 0.5 * abs(fp32[-1] - fp32[0]) > 0  # it trains, as fp32 does
    assert abs(bf16[-1] - fp32[-1]) < 0.25 * abs(fp32[-1] - fp32[0])
