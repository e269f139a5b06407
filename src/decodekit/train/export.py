"""Export a trained model as a self-contained HF directory, with its metrics.

The directory holds ``model.safetensors``, ``config.json``,
``generation_config.json``, the tokenizer files, ``corpus.json`` (the split)
and ``metrics.json`` (parameter count, training run, held-out losses, samples),
so ``AutoModelForCausalLM.from_pretrained(path)`` loads it offline.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig

from decodekit.train.evaluate import (
    EVALUATION_WINDOW,
    SUBSET_MAX_TOKENS,
    held_out_loss,
    subset_paths,
)
from decodekit.train.loop import parameter_count

SAMPLE_PROMPTS = (
    "def fibonacci(n):\n",
    "import os\n\n\ndef list_python_files(directory):\n",
    "class Stack:\n    \"\"\"A last-in, first-out container.\"\"\"\n\n    def __init__(self):\n",
    "def ",
)
SAMPLE_NEW_TOKENS = 64


@torch.no_grad()
def greedy_samples(model, tokenizer, prompts=SAMPLE_PROMPTS) -> list[dict[str, str]]:
    """Greedy continuations with plain ``transformers`` ``generate``."""
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, do_sample=False, max_new_tokens=SAMPLE_NEW_TOKENS)
        new_ids = output[0, inputs["input_ids"].shape[1] :]
        samples.append({"prompt": prompt, "continuation": tokenizer.decode(new_ids, skip_special_tokens=True)})
    return samples


def evaluate_model(model, tokenizer, corpus_texts: dict[str, str], validation: list[str]) -> dict:
    """Full held-out loss and the fixed-subset loss the integration test recomputes."""
    full = held_out_loss(model, tokenizer, [corpus_texts[p] for p in sorted(validation)])
    subset = subset_paths(validation)
    prefix = held_out_loss(
        model, tokenizer, [corpus_texts[p] for p in subset], max_tokens=SUBSET_MAX_TOKENS
    )
    return {
        "validation_full": asdict(full),
        "validation_subset": {**asdict(prefix), "max_tokens_per_file": SUBSET_MAX_TOKENS},
        "evaluation_window": EVALUATION_WINDOW,
    }


def export_model(
    model,
    tokenizer,
    directory: Path,
    corpus_manifest: dict,
    metrics: dict,
) -> dict:
    """Write the HF directory; returns the metrics as written (with parameter count)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / "corpus.json").write_text(json.dumps(corpus_manifest, indent=1) + "\n")
    metrics = {"parameters": parameter_count(model), **metrics}
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
