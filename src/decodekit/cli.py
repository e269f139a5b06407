"""``decodekit`` command line. ``decodekit generate --help`` lists every flag; each maps onto
one field of a strategy config or of :class:`~decodekit.options.DecodeOptions`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Iterator

from decodekit.cli_flags import add_config_flags, config_from_flags, reject_unused
from decodekit.constraints.flags import CONSTRAINT_FLAGS, add_constraint_flags, constraint_from_args
from decodekit.errors import ConfigError, DecodeKitError
from decodekit.options import DecodeOptions
from decodekit.search.sampling import Sampling

EXTENSIONS = ("decodekit.compare",)
"""Modules that add subcommands through ``register(subparsers)``, when present."""

_GENERAL = {"prompt", "model", "input", "output_format", "batch_size", "strategy", "command", "handler", "beam_sample", "device"}
_GENERAL |= set(CONSTRAINT_FLAGS)
_GENERAL |= {"speculative_proposer", "draft_model"}


def _strategies() -> dict[str, type]:
    from decodekit.api import STRATEGIES

    return STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decodekit", description="Exact, fast decoding for sequence models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="decode prompts with one strategy")
    gen.add_argument("prompt", nargs="?", help="prompt text; '-' or absent reads stdin (unless --input)")
    gen.add_argument("--model", default=None, help="embedded model name or local checkpoint directory (default: stdlib-code)")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--input", default=None, help="JSONL file, one {\"prompt\": ...} per line")
    gen.add_argument("--output-format", choices=("text", "jsonl"), default="text")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts decoded together from --input")
    gen.add_argument("--strategy", default="greedy", help="greedy, sample, beam, ... (see decodekit.api.STRATEGIES)")
    gen.add_argument("--beam-sample", action="store_true", help="beam sampling: beam search drawing with the sampling flags")
    spec = gen.add_argument_group("speculative decoding (greedy and sample; output unchanged)")
    spec.add_argument("--speculative", dest="speculative_proposer", choices=("suffix", "ngram", "draft", "recycling"), default=None, help="Greedy/Sampling.speculative: draft with this proposer, verify with the model")
    spec.add_argument("--draft-model", dest="draft_model", default=None, help="DraftModelConfig.model for --speculative draft (default: stdlib-code-draft)")
    seen: set[str] = set()
    add_config_flags(gen.add_argument_group("decoding options"), DecodeOptions, seen)
    for name, cls in _strategies().items():
        add_config_flags(gen.add_argument_group(f"{name} strategy"), cls, seen)
    add_constraint_flags(gen)
    gen.set_defaults(handler=run_generate)
    for module in EXTENSIONS:
        try:
            importlib.import_module(module).register(commands)
        except ModuleNotFoundError:
            continue
    return parser


def _read_prompts(args: argparse.Namespace) -> tuple[list[str], bool]:
    if args.input:
        from decodekit.compare import read_prompts

        return [record["prompt"] for record in read_prompts(args.input)], True
    if args.prompt is not None and args.prompt != "-":
        return [args.prompt], False
    return [sys.stdin.read()], False


def make_cli_strategy(args: argparse.Namespace):
    strategies = _strategies()
    if args.strategy not in strategies:
        raise ConfigError("--strategy", args.strategy, f"one of {', '.join(sorted(strategies))}")
    cls = strategies[args.strategy]
    shared = _GENERAL | set(vars(DecodeOptions()))
    if args.beam_sample:
        if "sampler" not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError("--beam-sample", True, f"a beam strategy with a sampler, not {args.strategy!r}")
        sampler = config_from_flags(Sampling, args)
        reject_unused(args.strategy, cls, args, shared | set(vars(sampler)))
        return with_speculative(dataclasses.replace(config_from_flags(cls, args), sampler=sampler), args)
    reject_unused(args.strategy, cls, args, shared)
    return with_speculative(config_from_flags(cls, args), args)


def with_speculative(strategy, args: argparse.Namespace):
    """``strategy`` with ``speculative`` set from ``--speculative`` / ``--draft-model``."""
    from decodekit.speculative import DraftModelConfig, Speculative

    name, draft = getattr(args, "speculative_proposer", None), getattr(args, "draft_model", None)
    if draft is not None and name != "draft":
        raise ConfigError("--draft-model", draft, "only together with --speculative draft")
    if name is None:
        return strategy
    if "speculative" not in {f.name for f in dataclasses.fields(strategy)}:
        raise ConfigError("--speculative", name, f"--strategy greedy or sample, not {args.strategy!r}")
    config = DraftModelConfig(model=draft) if draft is not None else None
    return dataclasses.replace(strategy, speculative=Speculative(name, config))


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_generate(args: argparse.Namespace) -> int:
    import decodekit

    strategy = make_cli_strategy(args)
    options = config_from_flags(DecodeOptions, args)
    strategy.validate()
    constraint = constraint_from_args(args)
    prompts, from_file = _read_prompts(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # keep stderr for decodekit's own progress
    decoder = decodekit.load(args.model, device=args.device)
    progress = None
    if from_file:
        from tqdm import tqdm

        progress = tqdm(total=len(prompts), unit="prompt", file=sys.stderr, disable=None)
    for batch in _batches(prompts, max(1, args.batch_size)):
        results = decoder.generate(batch, strategy, options=options, constraint=constraint)
        for result in results:
            if args.output_format == "jsonl":
                print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
            elif len(result.sequences) == 1:
                print(result.prompt + (result.text or ""), flush=True)
            else:
                for rank, sequence in enumerate(result.sequences, 1):
                    print(f"# {rank} score={sequence.score:.4f} ({sequence.finish_reason})")
                    print(result.prompt + (sequence.text or ""), flush=True)
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except DecodeKitError as error:
        print(f"decodekit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
