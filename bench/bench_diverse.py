"""Diverse Beam Search vs beam search on held-out standard-library code: diversity, quality, time.

    python bench/bench_diverse.py                         # the embedded code model
    python bench/bench_diverse.py --model random-llama    # a random model (develops the bench)
    python bench/bench_diverse.py --model PATH --prompts 100 --max-new-tokens 48

Prompts are function signatures with their docstrings (then class headers with docstrings,
then bare signatures, until ``--prompts``), extracted with ``ast`` from the held-out stdlib
files the embedded models never trained on. Every strategy returns ``num_beams = 8``
sequences per prompt; for each it reports, averaged over prompts, distinct-2 and distinct-4
(over token ids of the 8 outputs), self-BLEU (over their text), the mean and best total
log-probability, the number of model forwards, and the wall time of all prompts plus its ratio
to beam search. Strategies run one after another on the same batch of prompts, in rotated
order, so that background load hits all of them alike (:func:`decodekit.compare.compare`).
Writes a markdown table to stdout and a PNG (``--plot``) of distinct-2 against mean log-prob.
"""

from __future__ import annotations

import argparse
import ast
import textwrap

import torch

import decodekit
from decodekit.compare import compare, markdown_table, plot_tradeoff
from decodekit.models import held_out_files, stdlib_root


def _header_with_docstring(lines: list[str], node: ast.AST) -> str:
    """The source of ``node`` from its ``def``/``class`` line to the end of its docstring."""
    end = node.body[0].end_lineno if ast.get_docstring(node) else node.body[0].lineno - 1
    return textwrap.dedent("\n".join(lines[node.lineno - 1 : end])) + "\n"


def held_out_prompts(count: int, max_lines: int = 30) -> tuple[list[str], dict[str, int]]:
    """``count`` prompts from the held-out files, in a fixed order, and how many of each kind."""
    kinds: dict[str, list[str]] = {"function+docstring": [], "class+docstring": [], "signature": []}
    for name in held_out_files():
        source = (stdlib_root() / name).read_text(encoding="utf-8", errors="replace")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if not (is_function or isinstance(node, ast.ClassDef)):
                continue
            has_doc = ast.get_docstring(node) is not None
            kind = "function+docstring" if is_function and has_doc else "class+docstring" if has_doc else "signature"
            if kind == "signature" and not is_function:
                continue
            text = _header_with_docstring(lines, node)
            if text.count("\n") <= max_lines:
                kinds[kind].append(text)
    prompts, used = [], {}
    for kind, texts in kinds.items():
        take = texts[: count - len(prompts)]
        prompts += take
        used[kind] = len(take)
    if len(prompts) < count:
        raise SystemExit(f"only {len(prompts)} prompts in the held-out files; ask for fewer")
    return prompts, used


def random_llama(vocab: int, seed: int = 0) -> torch.nn.Module:
    """Same shape as the embedded model, random weights (to develop the bench quickly)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=704, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True, initializer_range=0.1,
    )
    return transformers.LlamaForCausalLM(config).eval()


def load(model: str) -> decodekit.Decoder:
    if model == "random-llama":
        from transformers import AutoTokenizer

        from decodekit.models import embedded_model_path

        tokenizer = AutoTokenizer.from_pretrained(embedded_model_path("stdlib-code"), local_files_only=True)
        return decodekit.load(random_llama(len(tokenizer)), tokenizer)
    return decodekit.load(model)


def strategies(beams: int, groups: list[int], strength: float) -> dict[str, object]:
    out = {"beam": decodekit.BeamSearch(num_beams=beams, num_return_sequences=beams)}
    for g in groups:
        out[f"dbs G={g}"] = decodekit.DiverseBeamSearch(
            num_beams=beams, num_groups=g, diversity_strength=strength, num_return_sequences=beams
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stdlib-code", help="embedded name, checkpoint dir, or random-llama")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--beams", type=int, default=8)
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--strength", type=float, default=0.5, help="Hamming diversity strength (lambda)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--plot", default="bench/out/bench_diverse.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prompts, kinds = held_out_prompts(args.prompts)
    decoder = load(args.model)
    runs = strategies(args.beams, args.groups, args.strength)
    decoder.generate(prompts[:1], runs["beam"], max_new_tokens=4)  # warm-up
    records = [{"prompt": p, "reference": None} for p in prompts]
    results = compare(decoder, records, runs, args.max_new_tokens, args.batch_size)
    made_of = ", ".join(f"{v} {k}" for k, v in kinds.items() if v)
    print(f"model {args.model}; {len(prompts)} held-out prompts ({made_of}); B={args.beams}, Hamming "
          f"lambda={args.strength:g}, max_new_tokens={args.max_new_tokens}, {args.batch_size} prompts per "
          f"batch, {args.threads} thread(s)\n")
    print(markdown_table(results, baseline="beam"))
    plot_tradeoff(results, args.plot, f"DBS vs beam search, B={args.beams}, {len(prompts)} held-out prompts ({args.model})")
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
