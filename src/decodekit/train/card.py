"""Render MODEL.md, the model card, from the exported models' metrics.json.

Every number in the card comes from ``metrics.json`` / ``corpus.json`` in the
exported directories, so the card and the integration test read the same
figures.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from decodekit.train.evaluate import EVALUATION_WINDOW, SUBSET_MAX_TOKENS
from decodekit.train.quality import PARSE_NEW_TOKENS

NAMES = ("stdlib-code", "stdlib-code-draft")


def _hardware(training: list[dict]) -> str:
    """The accelerators the models trained on, else the CPU they trained on (from their
    ``done.json``; models trained before it was recorded: this machine's)."""
    accelerators = sorted({t.get("device", "cpu") for t in training} - {"cpu"})
    if accelerators:
        return f"{', '.join(accelerators)} (training), torch {torch.__version__}"
    cpus = sorted({t["cpu"] for t in training if "cpu" in t})
    return f"{', '.join(cpus)}, no GPU, torch {torch.__version__}" if cpus else cpu_name() + f", no GPU, torch {torch.__version__}"


def cpu_name() -> str:
    """This machine's CPU model and logical CPU count."""
    processor = platform.processor() or platform.machine()
    model_name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{model_name or processor}, {os.cpu_count()} logical CPUs"


def _packages(corpus: dict) -> list[str]:
    """The code corpus's packages (none for the standard-library corpus)."""
    if "packages" not in corpus:
        return []
    lines = [
        "Also the Python sources of these installed packages (`decodekit.train.packages`), test",
        "directories excluded; named `site-packages/<path>`, split by the same rule. The",
        "validation loss below is the standard library's split alone, as for a standard-library",
        f"model. Deduplication over everything: {corpus['dedup']}; {corpus['near_duplicates']}",
        "near-duplicates dropped. Held-out packages are evaluation only.",
        "",
        "| package | version | licence | files | bytes | exact copies dropped | near-duplicates dropped | held out |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for p in corpus["packages"]:
        lines.append(f"| {p['name']} | {p['version']} | {p['licence']} | {p['files']:,} | {p['bytes']:,} "
                     f"| {p['exact_duplicates']} | {p['near_duplicates']} | {'yes' if p['held_out'] else ''} |")
    return [*lines, ""]


def _quality(metrics: dict) -> list[str]:
    """Parse rate of the fixed prompts' greedy blocks; the draft's agreement and acceptance."""
    target = metrics[NAMES[0]]
    if "parse" not in target:
        return []
    lines = [
        "",
        "## Does the code parse",
        "",
        f"Greedy continuations ({PARSE_NEW_TOKENS} new tokens, `generate`) of {len(target['parse'])} fixed prompts that each open a",
        "block; the block they complete (up to the next top-level line, or the last whole line at the",
        "token limit: `decodekit.train.quality.completed_block`) goes through `ast.parse`.",
        "",
        "| prompt | " + " | ".join(NAMES) + " |",
        "|---|" + "---|" * len(NAMES),
    ]
    for index, sample in enumerate(target["parse"]):
        marks = ["parses" if metrics[n]["parse"][index]["parses"] else "no" for n in NAMES]
        lines.append(f"| `{sample['prompt']!r}` | " + " | ".join(marks) + " |")
    lines.append("| **parsing** | " + " | ".join(f"**{sum(s['parses'] for s in metrics[n]['parse'])} / {len(metrics[n]['parse'])}**" for n in NAMES) + " |")
    agreement, acceptance = target.get("draft_agreement"), target.get("draft_acceptance")
    if agreement and acceptance:
        lines += [
            "",
            "## The draft against the target",
            "",
            f"Greedy agreement (`greedy_agreement`): the draft's most likely next token is the target's at {100 * agreement['agreement']:.1f}% of",
            f"{agreement['positions']:,} positions of the validation files (each cut to its first {agreement['max_tokens_per_file']} tokens, read",
            f"teacher-forced). Speculative greedy decoding with the `draft` proposer ({acceptance['num_tokens']} tokens per step) from each",
            f"validation file's first {acceptance['prompt_tokens']} tokens, {acceptance['new_tokens']} new tokens: {100 * acceptance['acceptance_rate']:.1f}% of drafted tokens",
            f"accepted, {acceptance['accepted_per_forward']:.2f} per verification forward, {acceptance['forwards_per_token']:.3f} target forwards per token.",
        ]
    return lines


def _fence(text: str) -> str:
    return "```python\n" + text.rstrip("\n") + "\n```"


def render(models_dir: Path, command: str) -> str:
    metrics = {name: json.loads((models_dir / name / "metrics.json").read_text()) for name in NAMES}
    corpus = json.loads((models_dir / NAMES[0] / "corpus.json").read_text())
    config = {name: json.loads((models_dir / name / "config.json").read_text()) for name in NAMES}
    target, draft = (metrics[name] for name in NAMES)
    lines = [
        "# Model card: `stdlib-code` and `stdlib-code-draft`",
        "",
        "Two small Llama-architecture causal language models for Python source, trained",
        "from scratch on this machine's CPU and shipped inside the package",
        "(`src/decodekit/models/`), so decodekit has a real model to decode with offline.",
        "`stdlib-code` is the default model; `stdlib-code-draft` shares its tokenizer and",
        "is meant as the draft model for speculative decoding. They are toys: good",
        "enough to produce plausible Python-looking text and to make decoding",
        "strategies, speculation and benchmarks meaningful, not to write code.",
        "",
        "## Corpus",
        "",
        f"The `*.py` files of the CPython {corpus['python_version']} standard library",
        "(`sysconfig.get_paths()['stdlib']`), excluding directories named "
        + ", ".join(f"`{d}`" for d in corpus["excluded_directories"]) + ",",
        "files that are not valid UTF-8 and empty files, deduplicated by content hash",
        f"({corpus['skipped_duplicates']} duplicates dropped).",
        f"Split: `{corpus['split_rule']}`.",
        "",
        "| split | files | bytes |",
        "|---|---:|---:|",
        f"| train | {corpus['train_files']} | {corpus['train_bytes']:,} |",
        f"| validation | {corpus['validation_files']} | {corpus['validation_bytes']:,} |",
        "",
        "Validation files: " + ", ".join(f"`{p}`" for p in corpus["validation"]) + ".",
        "The full file lists are in `corpus.json` next to each model.",
        "",
        *_packages(corpus),
        "## Tokenizer",
        "",
        f"Byte-level BPE (`tokenizers`), {config[NAMES[0]]['vocab_size']:,} entries including",
        "`<pad>` (0), `<bos>` (1) and `<eos>` (2), trained on the training split only.",
        "No normaliser and no added prefix space: decoding the encoding of any text gives",
        "back exactly that text (checked on every validation file at build time and by",
        "the tests). The tokenizer prepends `<bos>`; training files were packed as",
        "`<bos> file <eos>`.",
        "",
        "## Architectures",
        "",
        "| | stdlib-code (target) | stdlib-code-draft |",
        "|---|---:|---:|",
    ]
    rows = [
        ("parameters (tied embeddings counted once)", lambda n: f"{metrics[n]['parameters']:,}"),
        ("hidden size", lambda n: config[n]["hidden_size"]),
        ("layers", lambda n: config[n]["num_hidden_layers"]),
        ("attention heads / key-value heads",
         lambda n: f"{config[n]['num_attention_heads']} / {config[n]['num_key_value_heads']}"),
        ("MLP (SwiGLU) size", lambda n: config[n]["intermediate_size"]),
        ("max positions (RoPE)", lambda n: config[n]["max_position_embeddings"]),
        ("weights", lambda n: f"{config[n]['dtype']}, safetensors"),
    ]
    lines += [f"| {label} | {value(NAMES[0])} | {value(NAMES[1])} |" for label, value in rows]
    ratio = target["parameters"] / draft["parameters"]
    lines += [
        "",
        f"The draft has 1/{ratio:.1f} of the target's parameters.",
        "",
        "## Training",
        "",
        f"Hardware: {_hardware([metrics[n]['training'] for n in NAMES])}. The two models trained at the",
        f"same time, each in its own process with `torch.set_num_threads({metrics[NAMES[0]]['training']['threads']})`, while other work shared the machine.",
        "",
        "Recipe (both): AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear",
        "warm-up then cosine decay to 10% of the peak learning rate over the wall-clock",
        "budget, gradient clipping at 1.0, "
        + ("float32 weights with the forward under bfloat16 autocast" if metrics[NAMES[0]]["training"]["settings"].get("bf16") else "float32")
        + ", random chunks of the packed training",
        "stream (a seeded permutation per epoch).",
        "",
        "| | stdlib-code | stdlib-code-draft |",
        "|---|---:|---:|",
    ]
    train = {n: metrics[n]["training"] for n in NAMES}
    train_rows = [
        ("sequence length x batch", lambda n: f"{train[n]['settings']['sequence_length']} x {train[n]['settings']['batch_size']}"),
        ("peak learning rate", lambda n: f"{train[n]['settings']['peak_lr']:g}"),
        ("optimizer steps", lambda n: f"{train[n]['state']['step']:,}"),
        ("tokens seen", lambda n: f"{train[n]['state']['tokens_seen']:,}"),
        ("training time (step time, minutes)", lambda n: f"{train[n]['state']['elapsed_seconds'] / 60:.1f}"),
        ("wall-clock time (minutes)",
         lambda n: f"{train[n].get('wall_seconds', train[n]['process_seconds']) / 60:.1f}"),
        ("final training loss (nats)", lambda n: f"{train[n]['state']['last_loss']:.3f}"),
    ]
    lines += [f"| {label} | {value(NAMES[0])} | {value(NAMES[1])} |" for label, value in train_rows]
    lines += [
        "",
        "## Held-out evaluation",
        "",
        "Mean per-token cross-entropy in nats (and perplexity) of next-token prediction",
        "on the validation files, each encoded as `<bos> file <eos>` and scored in",
        f"windows of {EVALUATION_WINDOW} tokens overlapping by one token",
        "(`decodekit.train.evaluate.held_out_loss`). *Full*: every validation file,",
        f"all tokens. *Subset*: every validation file cut to its first {SUBSET_MAX_TOKENS}",
        "tokens; this is the figure `tests/integration/test_embedded_models.py`",
        "recomputes and checks (within 5%).",
        "",
        "| model | full: nats/token | full: perplexity | full: tokens | subset: nats/token | subset: perplexity | subset: tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in NAMES:
        full, subset = metrics[name]["validation_full"], metrics[name]["validation_subset"]
        lines.append(
            f"| {name} | {full['nats_per_token']:.4f} | {full['perplexity']:.2f} | {full['tokens']:,} "
            f"| {subset['nats_per_token']:.4f} | {subset['perplexity']:.2f} | {subset['tokens']:,} |"
        )
    if all("held_out_packages" in metrics[name] for name in NAMES):
        held = metrics[NAMES[0]]["held_out_packages"]
        lines += [
            "",
            "Held-out packages (" + ", ".join(f"`{p}`" for p in held["packages"]) + "; never trained on), each file",
            f"cut to its first {held['max_tokens_per_file']} tokens:",
            "",
            "| model | nats/token | perplexity | tokens | files |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in NAMES:
            h = metrics[name]["held_out_packages"]
            lines.append(f"| {name} | {h['nats_per_token']:.4f} | {h['perplexity']:.2f} | {h['tokens']:,} | {h['files']} |")
    lines += _quality(metrics)
    lines += [
        "",
        "## Samples",
        "",
        "Greedy continuations (64 new tokens, plain `transformers` `generate`,",
        "`do_sample=False`); the prompt is shown first, then the continuation.",
        "",
    ]
    for name in NAMES:
        lines += [f"### {name}", ""]
        for sample in metrics[name]["samples"]:
            lines += [f"Prompt `{sample['prompt']!r}`:", "", _fence(sample["prompt"] + sample["continuation"]), ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        command,
        "```",
        "",
        "This runs the four stages in order (`prepare`, `target`, `draft`, `export`);",
        "scratch files and resumable checkpoints go under `--work` (default",
        "`runs/train`, add `--resume` to continue). The shipped models were built with",
        "the stages run as separate commands, target and draft at the same time:",
        "",
        "```sh",
        "python -m decodekit.train --stage prepare",
        f"python -m decodekit.train --stage target --target-minutes {train[NAMES[0]]['settings']['budget_seconds'] / 60:g} &",
        f"python -m decodekit.train --stage draft --draft-minutes {train[NAMES[1]]['settings']['budget_seconds'] / 60:g} &",
        "wait",
        "python -m decodekit.train --stage export --card MODEL.md",
        "```",
        "",
        "The learning-rate schedule follows the wall-clock budget, so a rerun on other",
        "hardware takes a different number of steps and gives close, not identical,",
        "weights (pass `--max-steps` to fix the step count).",
        "",
    ]
    return "\n".join(lines)


def write_card(models_dir: Path, card_path: Path, command: str) -> None:
    card_path.write_text(render(models_dir, command), encoding="utf-8")


def update_quality(models_dir: Path, card_path: Path) -> None:
    """Put the quality sections (:func:`_quality`) of ``models_dir``'s metrics into an existing
    card, in place of the old ones or before its samples; the rest of the card is kept."""
    metrics = {name: json.loads((models_dir / name / "metrics.json").read_text()) for name in NAMES}
    text = card_path.read_text(encoding="utf-8")
    start = text.find("\n## Does the code parse")
    end = text.find("\n## Samples")
    if end < 0:
        raise ValueError(f"{card_path}: no '## Samples' section to put the quality sections before")
    head = text[:start] if 0 <= start < end else text[:end]
    card_path.write_text(head.rstrip("\n") + "\n" + "\n".join(_quality(metrics)) + "\n" + text[end:], encoding="utf-8")
