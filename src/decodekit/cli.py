"""``decodekit`` command line. ``decodekit generate --help`` lists every flag; each maps onto
one field of a strategy config or of :class:`~decodekit.options.DecodeOptions`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys

from decodekit.cli_flags import add_config_flags, config_from_flags, reject_unused
from decodekit.constraints.flags import CONSTRAINT_FLAGS, add_constraint_flags, constraint_from_args
from decodekit.errors import ConfigError, DecodeKitError, InputError
from decodekit.jobs import JobLine, check_input_path, decode_lines, done_lines, read_job
from decodekit.options import DecodeOptions
from decodekit.search.sampling import Sampling

EXTENSIONS = ("decodekit.compare", "decodekit.testtime.cli")
"""Modules that add subcommands through ``register(subparsers)``, when present."""

_GENERAL = {"prompt", "model", "input", "output_format", "batch_size", "strategy", "command", "handler", "beam_sample", "device"}
_GENERAL |= {"output", "on_error", "resume"}
_GENERAL |= set(CONSTRAINT_FLAGS)
_GENERAL |= {"speculative_proposer", "draft_model", "draft_branching"}


def _strategies() -> dict[str, type]:
    """Every strategy ``generate`` takes: the engine's, and those decoded on a search tree
    (contrastive search, AdaDec, OPERA)."""
    from decodekit.api import STRATEGIES
    from decodekit.testtime.decode import TREE_STRATEGIES

    return {**STRATEGIES, **TREE_STRATEGIES}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decodekit", description="Exact, fast decoding for sequence models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="decode prompts with one strategy")
    gen.add_argument("prompt", nargs="?", help="prompt text; '-' or absent reads stdin (unless --input)")
    gen.add_argument("--model", default=None, help="embedded model name or local checkpoint directory (default: stdlib-code)")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--input", default=None, help="JSONL file, one {\"prompt\": ...} per line")
    gen.add_argument("--output-format", choices=("text", "jsonl"), default="text")
    gen.add_argument("--output", default=None, help="with --input: write JSONL records to this file (default: stdout)")
    gen.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="with --input: a line that cannot be decoded stops the job (stop) or gets an error record (skip)")
    gen.add_argument("--resume", action="store_true", help="with --input and --output: skip the lines already in --output, append the rest")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts decoded together from --input")
    gen.add_argument("--strategy", default="greedy", help="greedy, sample, beam, ... (see decodekit.api.STRATEGIES)")
    gen.add_argument("--beam-sample", action="store_true", help="beam sampling: beam search drawing with the sampling flags")
    spec = gen.add_argument_group("speculative decoding (greedy and sample; output unchanged)")
    spec.add_argument("--speculative", dest="speculative_proposer", choices=("suffix", "ngram", "draft", "recycling"), default=None, help="Greedy/Sampling.speculative: draft with this proposer, verify with the model")
    spec.add_argument("--draft-model", dest="draft_model", default=None, help="DraftModelConfig.model for --speculative draft (default: stdlib-code-draft)")
    spec.add_argument("--draft-branching", dest="draft_branching", type=_branching, default=None, help="DraftModelConfig.branching for --speculative draft: children per depth, e.g. 3,2 (a Recursive Speculative Decoding tree)")
    seen: set[str] = set()
    add_config_flags(gen.add_argument_group("decoding options"), DecodeOptions, seen)
    for name, cls in _strategies().items():
        add_config_flags(gen.add_argument_group(f"{name} strategy"), cls, seen)
    add_constraint_flags(gen)
    gen.set_defaults(handler=run_generate)
    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, models, health, metrics)")
    serve.add_argument("model", nargs="?", default=None, help="embedded model name or local checkpoint directory (default: stdlib-code)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: the model's name)")
    serve.add_argument("--max-concurrent-requests", type=int, default=256, help="requests decoding at once (default 256)")
    serve.add_argument("--max-queued-requests", type=int, default=1024, help="requests waiting for a slot; beyond them a 429 (default 1024)")
    serve.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: the model's context)")
    serve.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted (default 4096)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; beyond it a 413 (default 1 MiB)")
    serve.add_argument("--max-request-rows", type=int, default=256, help="rows one request decodes: its prompts times n or beams (default 256)")
    serve.add_argument("--threads", type=int, default=None, help="torch threads of the engine (default: torch's, which follows OMP_NUM_THREADS)")
    serve.add_argument("--prompt-cache-mib", type=int, default=64,
                       help="MiB of prefilled prompts kept, so a prompt seen again skips its prefill (default 64; 0: off)")
    serve.add_argument("--engine-in-process", action="store_true", help="run the engine in the server's process (default: a process of its own, so HTTP work never stalls a forward)")
    serve.set_defaults(handler=run_serve)
    for module in EXTENSIONS:
        try:
            importlib.import_module(module).register(commands)
        except ModuleNotFoundError:
            continue
    return parser


def _read_prompt(args: argparse.Namespace) -> str:
    """The one prompt of a run without ``--input``: the argument, or stdin."""
    if args.prompt is not None and args.prompt != "-":
        text = args.prompt
    else:
        stream = getattr(sys.stdin, "buffer", None)  # bytes when stdin is a real stream
        try:
            text = stream.read().decode("utf-8") if stream is not None else sys.stdin.read()
        except UnicodeDecodeError as error:
            raise InputError(f"stdin: not UTF-8 text (byte {error.start})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("prompt: text with a lone surrogate (not valid Unicode)") from None
    return text


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


def _branching(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 3,2") from None


def with_speculative(strategy, args: argparse.Namespace):
    """``strategy`` with ``speculative`` set from ``--speculative`` / ``--draft-model``."""
    from decodekit.speculative import DraftModelConfig, Speculative

    name, draft = getattr(args, "speculative_proposer", None), getattr(args, "draft_model", None)
    branching = getattr(args, "draft_branching", None)
    for flag, value in (("--draft-model", draft), ("--draft-branching", branching)):
        if value is not None and name != "draft":
            raise ConfigError(flag, value, "only together with --speculative draft")
    if name is None:
        return strategy
    if "speculative" not in {f.name for f in dataclasses.fields(strategy)}:
        raise ConfigError("--speculative", name, f"--strategy greedy or sample, not {args.strategy!r}")
    settings = {k: v for k, v in (("model", draft), ("branching", branching)) if v is not None}
    config = DraftModelConfig(**settings) if settings else None
    return dataclasses.replace(strategy, speculative=Speculative(name, config))


def _print_result(result, output_format: str) -> None:
    if output_format == "jsonl":
        print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
    elif len(result.sequences) == 1:
        print(result.prompt + (result.text or ""), flush=True)
    else:
        for rank, sequence in enumerate(result.sequences, 1):
            print(f"# {rank} score={sequence.score:.4f} ({sequence.finish_reason})")
            print(result.prompt + (sequence.text or ""), flush=True)


def run_generate(args: argparse.Namespace) -> int:
    import decodekit

    strategy = make_cli_strategy(args)
    options = config_from_flags(DecodeOptions, args)
    strategy.validate()
    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "an integer >= 1")
    if (args.output or args.resume) and not args.input:
        raise ConfigError("--output" if args.output else "--resume", True, "only together with --input")
    if args.resume and not args.output:
        raise ConfigError("--resume", True, "together with --output (the file to continue)")
    constraint = constraint_from_args(args)
    if args.input:
        check_input_path(args.input)
    else:
        prompt = _read_prompt(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # keep stderr for decodekit's own progress
    decoder = decodekit.load(args.model, device=args.device)
    if not args.input:
        _print_result(decoder.generate(prompt, strategy, options=options, constraint=constraint), args.output_format)
        return 0
    return _run_job(decoder, args, strategy, options, constraint)


def _run_job(decoder, args, strategy, options, constraint) -> int:
    """Decode every line of ``--input``; one JSONL record (or text) per line, in order."""
    from tqdm import tqdm

    done = done_lines(args.output) if args.resume else set()
    out = open(args.output, "a" if args.resume else "w", encoding="utf-8") if args.output else sys.stdout
    jsonl = args.output is not None or args.output_format == "jsonl"
    failed = 0
    progress = tqdm(unit="prompt", file=sys.stderr, disable=None)

    def write(line: JobLine, record: dict) -> bool:
        """Write one record; False when it is an error and the job stops."""
        nonlocal failed
        if "error" in record:
            failed += 1
            if args.on_error == "stop":
                print(f"decodekit: error: {args.input} line {line.number}: {record['error']}", file=sys.stderr)
                return False
        if jsonl:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
        elif "error" in record:
            print(f"decodekit: {args.input} line {line.number}: {record['error']}", file=sys.stderr)
        else:
            for result in decoder_results(record):
                _print_result(result, "text")
        progress.update(1)
        return True

    try:
        batch: list[JobLine] = []
        for line in read_job(args.input):
            if line.number in done:
                continue
            if line.error is not None:
                if not _flush(decoder, batch, strategy, options, constraint, write) or not write(line, line.record() | {"error": line.error}):
                    return 1
                batch = []
                continue
            batch.append(line)
            if len(batch) == args.batch_size:
                if not _flush(decoder, batch, strategy, options, constraint, write):
                    return 1
                batch = []
        if not _flush(decoder, batch, strategy, options, constraint, write):
            return 1
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    if failed:
        print(f"decodekit: {failed} line(s) of {args.input} could not be decoded (error records written)", file=sys.stderr)
    return 0


def _flush(decoder, batch, strategy, options, constraint, write) -> bool:
    for line, record in decode_lines(decoder, batch, strategy, options, constraint) if batch else ():
        if not write(line, record):
            return False
    return True


def decoder_results(record: dict):
    """The text form of a record: its prompt followed by each sequence's text."""
    from decodekit.results import GeneratedSequence, GenerationResult

    sequences = [GeneratedSequence(**s) for s in record["sequences"]]
    return [GenerationResult(record["prompt"], record["prompt_token_ids"], sequences, record["strategy"])]


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from transformers.utils import logging as transformers_logging

    import decodekit
    from decodekit.serve import ServerLimits, create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "a TCP port in [0, 65535]")
    for flag, value, low in (("--max-concurrent-requests", args.max_concurrent_requests, 1), ("--max-queued-requests", args.max_queued_requests, 0),
                             ("--max-tokens-limit", args.max_tokens_limit, 1), ("--max-body-bytes", args.max_body_bytes, 1024),
                             ("--max-request-rows", args.max_request_rows, 1)):
        if value < low:
            raise ConfigError(flag, value, f"an integer >= {low}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise ConfigError("--max-prompt-tokens", args.max_prompt_tokens, "an integer >= 1")
    limits = ServerLimits(args.max_concurrent_requests, args.max_queued_requests, args.max_prompt_tokens, args.max_tokens_limit, args.max_body_bytes, args.max_request_rows)
    transformers_logging.disable_progress_bar()
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads", args.threads, "an integer >= 1")
    if args.prompt_cache_mib < 0:
        raise ConfigError("--prompt-cache-mib", args.prompt_cache_mib, "an integer >= 0 (0: no prompt cache)")
    in_process = args.engine_in_process or sys.platform == "win32"  # the child needs POSIX fd passing
    if in_process:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        decoder = decodekit.load(args.model, device=args.device, prompt_cache_mib=args.prompt_cache_mib)
    else:
        from decodekit.serve.remote import EngineProcess

        decoder = EngineProcess(args.model, device=args.device, threads=args.threads, prompt_cache_mib=args.prompt_cache_mib)
    name = args.served_model_name or (args.model or "stdlib-code")
    # the app closes the engine's process when it shuts down (uvicorn then re-raises the signal)
    app = create_app(decoder, name, limits, close_on_shutdown=not in_process)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if not in_process:
            decoder.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Errors are one line on stderr, never a traceback: exit code 2 for
    a bad setting or input (usage), 1 for a failure while running, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, InputError) as error:
        print(f"decodekit: error: {error}", file=sys.stderr)
        return 2
    except DecodeKitError as error:
        print(f"decodekit: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("decodekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as error:
        print(f"decodekit: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line, the type and message say what
        if os.environ.get("DECODEKIT_TRACEBACK"):
            raise
        print(f"decodekit: internal error: {type(error).__name__}: {error} (set DECODEKIT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
