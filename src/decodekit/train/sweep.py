"""``--stage sweep``: which target size a training budget buys, measured on the device at hand.

Every shape of ``--sweep-shapes`` (``HIDDENxLAYERS``; heads, key-value heads and the MLP follow
the target preset's proportions) trains from scratch for the same ``--sweep-minutes`` on
``--device``, with the target's recipe, then is scored on the validation subset. The same
wall-clock on one device is the same compute, so the table is one iso-compute slice: the
shape with the lowest held-out loss is what that budget should train. Each row also gives the
measured training tokens/s and, at the full ``--target-minutes``, the tokens per parameter the
shape would see (compute-optimal training wants about 20, Hoffmann et al., 2022). Writes
``sweep.json`` under ``--work`` and prints the table and the command for the winner.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from safetensors.torch import load_file
from transformers import AutoTokenizer

from decodekit.train.evaluate import SUBSET_MAX_TOKENS, held_out_loss, subset_paths
from decodekit.train.loop import TrainSettings, parameter_count, train


def parse_shape(text: str) -> tuple[int, int]:
    """``"384x8"`` -> ``(384, 8)``; ValueError naming the form otherwise."""
    try:
        hidden, layers = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sweep-shapes: {text!r} is not HIDDENxLAYERS (e.g. 384x8)") from None
    if hidden < 16 or hidden % 16 or layers < 1:
        raise ValueError(f"--sweep-shapes: {text!r}: the hidden size must be a multiple of 16, the layers >= 1")
    return hidden, layers


def sweep(args: argparse.Namespace) -> list[dict]:
    from decodekit.train.__main__ import fresh_model, load_corpus, model_size

    shapes = [parse_shape(s) for s in args.sweep_shapes]
    work = args.work
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"), local_files_only=True)
    stream = load_file(str(work / "train_tokens.safetensors"))["tokens"]
    manifest = json.loads((work / "corpus.json").read_text())
    code = "held_out_packages" in manifest
    corpus = load_corpus(args, "code" if code else "stdlib")
    validation = corpus.stdlib_validation if code else corpus.validation
    texts = [corpus.texts[p] for p in subset_paths(validation)]
    rows = []
    for hidden, layers in shapes:
        shaped = argparse.Namespace(**{**vars(args), "target_hidden": hidden, "target_layers": layers})
        model = fresh_model(shaped, "target", tokenizer)
        settings = TrainSettings(
            sequence_length=args.sequence_length, batch_size=args.batch_size, peak_lr=args.target_lr,
            budget_seconds=60.0 * args.sweep_minutes, max_steps=args.max_steps, seed=args.seed,
            device=args.device, bf16=args.bf16,
        )
        directory = work / "sweep" / f"{hidden}x{layers}"
        directory.mkdir(parents=True, exist_ok=True)
        state = train(model, stream, settings, directory / "checkpoint", directory / "log.jsonl",
                      resume=args.resume, description=f"sweep {hidden}x{layers}")
        loss = held_out_loss(model, tokenizer, texts, max_tokens=SUBSET_MAX_TOKENS)
        parameters = parameter_count(model)
        tokens_per_second = state.tokens_seen / max(state.elapsed_seconds, 1e-9)
        rows.append({
            "hidden": hidden, "layers": layers, "size": asdict(model_size(shaped, "target")),
            "parameters": parameters, "steps": state.step, "tokens_seen": state.tokens_seen,
            "tokens_per_second": tokens_per_second, "subset_nats_per_token": loss.nats_per_token,
            "tokens_per_parameter_at_full_budget": tokens_per_second * 60.0 * args.target_minutes / parameters,
        })
        model.to("cpu")
    best = min(rows, key=lambda r: r["subset_nats_per_token"])
    record = {"device": args.device, "bf16": args.bf16, "sweep_minutes": args.sweep_minutes,
              "target_minutes": args.target_minutes, "sequence_length": args.sequence_length,
              "batch_size": args.batch_size, "rows": rows, "best": f"{best['hidden']}x{best['layers']}"}
    (work / "sweep.json").write_text(json.dumps(record, indent=1) + "\n")
    print(render_sweep(record))
    print(f"train it: python -m decodekit.train --stage target --target-hidden {best['hidden']} "
          f"--target-layers {best['layers']} --target-minutes {args.target_minutes:g} --device {args.device}"
          + (" --bf16" if args.bf16 else ""))
    return rows


def render_sweep(record: dict) -> str:
    """The sweep as a Markdown table (also what the model card shows)."""
    lines = [
        f"Each shape trained {record['sweep_minutes']:g} minutes on {record['device']}"
        f"{' (bf16 autocast)' if record['bf16'] else ''}, sequences of {record['sequence_length']} x {record['batch_size']}; "
        f"validation subset loss; tokens per parameter if trained for the full {record['target_minutes']:g} minutes.",
        "",
        "| shape | parameters | tokens/s | tokens seen | subset nats/token | tokens/parameter at full budget |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        mark = " (best)" if f"{r['hidden']}x{r['layers']}" == record["best"] else ""
        lines.append(f"| {r['hidden']}x{r['layers']}{mark} | {r['parameters']:,} | {r['tokens_per_second']:,.0f} | "
                     f"{r['tokens_seen']:,} | {r['subset_nats_per_token']:.4f} | {r['tokens_per_parameter_at_full_budget']:.1f} |")
    return "\n".join(lines)
