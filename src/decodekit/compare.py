"""``decodekit compare``: several strategies on the same prompts, side by side.

    decodekit compare --input prompts.jsonl --plot compare.png
    decodekit compare --input prompts.jsonl --model path/to/checkpoint --num-beams 6 --num-groups 3

``prompts.jsonl`` holds one ``{"prompt": ..., "reference": ...}`` per line (``reference`` is
optional; with it the table has oracle BLEU and chrF). The strategies are beam search, Diverse
Beam Search with each diversity function, and ancestral sampling, each returning
``--num-beams`` sequences per prompt. The table shows, averaged over prompts, quality (mean and
best log-probability, oracles), diversity (distinct-2, distinct-4, self-BLEU) and total wall
time; the PNG plots diversity against log-probability.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from decodekit.errors import InputError
from decodekit.metrics import average_reports, nbest_report


@dataclass(frozen=True)
class StrategyRun:
    """One row of the comparison: averaged metrics, the wall time of all prompts and the
    number of model forwards (None when the model does not count them)."""

    name: str
    metrics: dict[str, float | None]
    seconds: float
    forwards: int | None = None


def read_prompts(path: str) -> list[dict]:
    """``[{"prompt": str, "reference": str | None}]`` from a JSONL file."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path} line {number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise InputError(f"{path} line {number}: needs a non-empty string field \"prompt\"")
            reference = record.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise InputError(f"{path} line {number}: \"reference\" must be a string")
            records.append({"prompt": record["prompt"], "reference": reference})
    if not records:
        raise InputError(f"{path}: no prompts")
    return records


def default_strategies(beams: int, groups: int, strength: float, seed: int) -> dict[str, object]:
    """Beam search, DBS with every diversity function, and sampling, all with ``beams`` outputs."""
    from decodekit.scoring.diversity import DIVERSITY_FUNCTIONS
    from decodekit.search.beam import BeamSearch
    from decodekit.search.diverse import DiverseBeamSearch
    from decodekit.search.sampling import Sampling

    runs: dict[str, object] = {"beam": BeamSearch(num_beams=beams, num_return_sequences=beams)}
    for function in DIVERSITY_FUNCTIONS:
        runs[f"dbs-{function}"] = DiverseBeamSearch(
            num_beams=beams, num_groups=groups, diversity_strength=strength, diversity=function,
            ngram_size=1 if function == "embedding" else 2, num_return_sequences=beams,
        )
    runs["sample"] = Sampling(n=beams, seed=seed)
    return runs


def compare(decoder, records: list[dict], strategies: Mapping[str, object], max_new_tokens: int, batch_size: int = 4) -> list[StrategyRun]:
    """Run every strategy over ``records`` (batches of ``batch_size`` prompts; strategies take
    turns per batch so that background load affects them alike) and average their metrics."""
    names = list(strategies)
    seconds = dict.fromkeys(names, 0.0)
    forwards = dict.fromkeys(names, 0)
    model = decoder.model
    reports: dict[str, list] = {name: [] for name in names}
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    for index, batch in enumerate(batches):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            before = getattr(model, "forward_count", 0)
            start = time.perf_counter()
            results = decoder.generate([r["prompt"] for r in batch], strategies[name], max_new_tokens=max_new_tokens)
            seconds[name] += time.perf_counter() - start
            forwards[name] += getattr(model, "forward_count", 0) - before
            for record, result in zip(batch, results, strict=True):
                seqs = result.sequences
                reports[name].append(nbest_report(
                    [s.text or "" for s in seqs], [s.logprob for s in seqs], [s.token_ids for s in seqs], record["reference"],
                ))
    counted = hasattr(model, "forward_count")
    return [StrategyRun(name, average_reports(reports[name]), seconds[name], forwards[name] if counted else None) for name in names]


COLUMNS = (
    ("distinct-2", "distinct_2", "{:.3f}"), ("distinct-4", "distinct_4", "{:.3f}"), ("self-BLEU", "self_bleu", "{:.1f}"),
    ("mean logprob", "mean_logprob", "{:.2f}"), ("best logprob", "best_logprob", "{:.2f}"),
    ("oracle BLEU", "oracle_bleu", "{:.1f}"), ("oracle chrF", "oracle_chrf", "{:.1f}"),
)


def markdown_table(runs: list[StrategyRun], baseline: str | None = None) -> str:
    """A markdown table of the runs; columns without values (no references) are left out;
    with ``baseline``, a column of each run's time over the baseline's."""
    columns = [c for c in COLUMNS if any(r.metrics.get(c[1]) is not None for r in runs)]
    base = next((r.seconds for r in runs if r.name == baseline), None)
    counted = all(r.forwards is not None for r in runs)
    head = ["strategy", *(c[0] for c in columns)] + (["forwards"] if counted else []) + ["time (s)"]
    head += ["time / " + baseline] if base else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [run.name, *(fmt.format(run.metrics[key]) for _, key, fmt in columns)]
        cells += ([str(run.forwards)] if counted else []) + [f"{run.seconds:.2f}"]
        if base:
            cells.append(f"{run.seconds / base:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(runs: list[StrategyRun], path: str | Path, title: str) -> None:
    """PNG: distinct-2 (diversity) against mean log-probability (quality), one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for run in runs:
        x, y = run.metrics["distinct_2"], run.metrics["mean_logprob"]
        axis.scatter(x, y, s=50, label=run.name)
    axis.legend(fontsize=7)  # a legend, not labels on the points: close points would overlap
    axis.set_xlabel("distinct-2 of the n-best list (higher = more diverse)")
    axis.set_ylabel("mean log-probability of the n-best list")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_compare(args: argparse.Namespace) -> int:
    import decodekit
    from decodekit.errors import ConfigError

    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens), ("--num-beams", args.num_beams)):
        if value < 1:
            raise ConfigError(flag, value, "an integer >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads", args.threads, "an integer >= 1")
    records = read_prompts(args.input)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    strategies = default_strategies(args.num_beams, args.num_groups, args.diversity_strength, args.seed)
    for config in strategies.values():
        config.validate()
    decoder = decodekit.load(args.model, device=args.device)
    runs = compare(decoder, records, strategies, args.max_new_tokens, args.batch_size)
    print(markdown_table(runs, baseline="beam"))
    if args.plot:
        plot_tradeoff(runs, args.plot, f"{len(records)} prompts, {args.num_beams} outputs each")
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``compare`` subcommand to the ``decodekit`` command line."""
    parser = subparsers.add_parser("compare", help="compare strategies on a prompt file: quality, diversity, time")
    parser.add_argument("--input", required=True, help="JSONL file, one {\"prompt\": ..., \"reference\": ...} per line")
    parser.add_argument("--model", default=None, help="embedded model name or local checkpoint directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-beams", type=int, default=8, help="outputs per prompt, for every strategy")
    parser.add_argument("--num-groups", type=int, default=4, help="Diverse Beam Search groups")
    parser.add_argument("--diversity-strength", type=float, default=0.5, help="Diverse Beam Search lambda")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--plot", default="compare.png", help="PNG path ('' for none)")
    parser.set_defaults(handler=run_compare)
