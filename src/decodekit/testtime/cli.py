"""``decodekit search``: a test-time search from the command line, e.g.

    decodekit search --prompt-file prompt.py --reward tests.py --strategy mcts --rollouts 32

Each search's settings are flags (one per config field); ``--temperature``/``--top-p``/
``--top-k``/``--min-p`` set the sampler the search draws with."""

from __future__ import annotations

import argparse
import dataclasses
import json

from decodekit.cli_flags import add_config_flags, flag_name
from decodekit.errors import ConfigError, InputError

_SAMPLER_FLAGS = ("temperature", "top_p", "top_k", "min_p")


def register(subparsers) -> None:
    """Add the ``search`` subcommand to the ``decodekit`` command line."""
    from decodekit.testtime.search import SEARCHES

    parser = subparsers.add_parser("search", help="test-time search for the completion a reward likes best (best-of-N, reward beam, DVTS, A*, MCTS, ...)")
    parser.add_argument("prompt", nargs="?", help="prompt text; '-' or absent reads stdin (unless --prompt-file)")
    parser.add_argument("--prompt-file", default=None, help="read the prompt from this file (exactly, trailing whitespace included)")
    parser.add_argument("--model", default=None, help="embedded model name or local checkpoint directory (default: stdlib-code)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategy", default="best_of_n", help=f"one of {', '.join(SEARCHES)}")
    parser.add_argument("--reward", default=None, help="a Python tests file (test_* functions or top-level asserts): reward = fraction of tests the prompt + completion passes in the sandbox")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="sandbox wall-clock limit per program (default 2)")
    parser.add_argument("--memory-mb", type=int, default=256, help="sandbox address-space limit per program (default 256)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeat for several), e.g. --stop $'\\ndef '")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-format", choices=("text", "json"), default="text", help="text: prompt + best completion; json: the whole result with candidates and compute")
    sampler = parser.add_argument_group("sampler of the search (Sampling fields)")
    sampler.add_argument("--temperature", type=float, default=None)
    sampler.add_argument("--top-p", dest="top_p", type=float, default=None)
    sampler.add_argument("--top-k", dest="top_k", type=int, default=None)
    sampler.add_argument("--min-p", dest="min_p", type=float, default=None)
    seen = {"seed", "max_new_tokens", "stop", *_SAMPLER_FLAGS}
    for name, cls in SEARCHES.items():
        add_config_flags(parser.add_argument_group(f"{name} search"), cls, seen)
    parser.set_defaults(handler=run_search_command)


def _prompt(args) -> str:
    if args.prompt_file is not None:
        if args.prompt is not None:
            raise ConfigError("--prompt-file", args.prompt_file, "either a prompt argument or --prompt-file, not both")
        try:
            with open(args.prompt_file, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--prompt-file {args.prompt_file}: {error}") from None
    from decodekit.cli import _read_prompt

    return _read_prompt(args)


def make_config(args):
    """The search config the flags describe; a flag of another search is refused."""
    from decodekit.search.sampling import Sampling
    from decodekit.testtime.search import SEARCHES

    if args.strategy not in SEARCHES:
        raise ConfigError("--strategy", args.strategy, f"one of {', '.join(SEARCHES)}")
    cls = SEARCHES[args.strategy]
    own = {f.name for f in dataclasses.fields(cls)}
    every = {f.name for other in SEARCHES.values() for f in dataclasses.fields(other)}
    values = {}
    for name in every:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            raise ConfigError(flag_name(name), value, f"a setting of another search, not of {args.strategy!r}")
        values[name] = value
    sampling = {name: getattr(args, name) for name in _SAMPLER_FLAGS if getattr(args, name) is not None}
    target = "sampler" if "sampler" in own else "rollout_sampler" if "rollout_sampler" in own else None
    if sampling:
        if target is None:
            raise ConfigError(flag_name(next(iter(sampling))), next(iter(sampling.values())), f"a sampler setting; {args.strategy!r} does not sample")
        base = getattr(cls(), target) or Sampling()
        values[target] = dataclasses.replace(base, **sampling)
    return cls(**values)


def run_search_command(args: argparse.Namespace) -> int:
    import decodekit
    from decodekit.testtime.executable import ExecutableReward
    from decodekit.testtime.sandbox import SandboxLimits
    from decodekit.testtime.search import make_search

    config = make_search(make_config(args))
    reward = None
    if args.reward is not None:
        reward = ExecutableReward.from_file(args.reward, limits=SandboxLimits(timeout_s=args.timeout_s, memory_mb=args.memory_mb))
    elif config.needs_reward:
        raise ConfigError("--reward", None, f"a tests file: {config.name} ranks completions by their pass rate")
    prompt = _prompt(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    decoder = decodekit.load(args.model, device=args.device)
    result = decoder.search(prompt, config, reward, max_new_tokens=args.max_new_tokens, stop=tuple(args.stop or ()), seed=args.seed)
    if args.output_format == "json":
        print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
    else:
        print(prompt + result.text, flush=True)
    return 0
