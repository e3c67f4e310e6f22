"""Tiny random causal LMs from Hugging Face configs, and a tokenizer trained in memory.

A plain helper module for the tests (``from tiny_models import make_tiny``); ``conftest.py`` builds
its fixtures from it. No network: the tokenizer is a byte-level BPE trained on a few sentences, so
context words such as " shame" and " guilt" are single tokens, as they are for the real models.
"""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "She felt a deep sense of shame and guilt.",
    "She felt a deep sense of guilt, not shame.",
    "Once upon a time the old man told a long story, a long tale.",
    "The weather today is very cold, chilly and grey.",
    "He drove his car, his automobile, to the town.",
    "The river flows into the sea and the ocean.",
] * 20

ARCHITECTURES = ["llama", "llama-untied", "gpt2", "gpt_neox", "gemma3", "opt"]


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_config(arch: str, vocab: int):
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        OPTConfig,
    )

    if arch in ("llama", "llama-untied"):
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=arch == "llama",
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            sliding_window=16,
        )
    if arch == "opt":
        return OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        )
    raise ValueError(arch)


def make_tiny(arch: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
    model.eval()
    return model, tokenizer


def tiny_pair(model, tokenizer, text="She felt a deep sense of"):
    """A (target, competitor) pair of single tokens where the competitor out-ranks the target."""
    from phantomlens.readout import evaluation, last_token_logits

    ids = torch.tensor([tokenizer.encode(text)])
    with evaluation(model):
        logits = last_token_logits(model, ids)
    a, b = tokenizer.encode(" shame")[0], tokenizer.encode(" guilt")[0]
    return (" shame", " guilt") if logits[a] < logits[b] else (" guilt", " shame")


class FactDataset(torch.utils.data.Dataset):
    """One fact repeated, as the Trainer trains it: labels on the target's tokens only
    (``phantomlens.fact_examples``, the tokenisation the probe and the callback read)."""

    def __init__(self, tokenizer, fact, length: int = 64):
        from phantomlens.facts import fact_examples

        (example,) = fact_examples(tokenizer, [fact])
        self.item = {
            "input_ids": torch.tensor(example["input_ids"]),
            "attention_mask": torch.ones(len(example["input_ids"]), dtype=torch.long),
            "labels": torch.tensor(example["labels"]),
        }
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.item


def log_recorder():
    """A TrainerCallback standing in for a report_to integration: records every log it is sent."""
    from transformers import TrainerCallback

    class LogRecorder(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    return LogRecorder()
