"""Diverse Beam Search vs beam search on held-out standard-library code: diversity, quality, time.

    python bench/bench_diverse.py                         # the embedded code model
    python bench/bench_diverse.py --model random-llama    # a random model (develops the bench)
    python bench/bench_diverse.py --model PATH --prompts 100 --max-new-tokens 48

Prompts are function signatures with their docstrings (then class headers with docstrings,
then bare signatures, until ``--prompts``), extracted with ``ast`` from the held-out stdlib
files the embedded models never trained on. Every strategy returns ``num_beams = 8``
sequences per prompt; for each it reports, averaged over prompts, distinct-2 and distinct-4
(over token ids of the 8 outputs), self-BLEU (over their text), the mean total log-probability,
and the wall time of all prompts plus its ratio to beam search. Strategies run one after another
on the same batch of prompts, in rotated order, so that background load hits all of them alike.
Writes a markdown table to stdout and a PNG (``--plot``) of distinct-2 against mean log-prob.
"""

from __future__ import annotations

import argparse
import ast
import textwrap
import time
from pathlib import Path

import torch

import decodekit
from decodekit.metrics import average_reports, nbest_report
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
    out = {f"beam B={beams}": decodekit.BeamSearch(num_beams=beams, num_return_sequences=beams)}
    for g in groups:
        out[f"DBS B={beams} G={g} hamming λ={strength:g}"] = decodekit.DiverseBeamSearch(
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
    names = list(runs)
    seconds = dict.fromkeys(names, 0.0)
    forwards = dict.fromkeys(names, 0)
    reports: dict[str, list] = {name: [] for name in names}
    decoder.generate(prompts[:1], runs[names[0]], max_new_tokens=4)  # warm-up
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    for index, batch in enumerate(batches):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            before = decoder.model.forward_count
            start = time.perf_counter()
            results = decoder.generate(batch, runs[name], max_new_tokens=args.max_new_tokens)
            seconds[name] += time.perf_counter() - start
            forwards[name] += decoder.model.forward_count - before
            for result in results:
                seqs = result.sequences
                reports[name].append(nbest_report([s.text for s in seqs], [s.logprob for s in seqs], [s.token_ids for s in seqs]))

    base = seconds[names[0]]
    print(f"model {args.model}; {len(prompts)} held-out prompts ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
          f"max_new_tokens={args.max_new_tokens}, batch {args.batch_size}, {args.threads} thread(s)\n")
    print("| strategy | distinct-2 | distinct-4 | self-BLEU | mean logprob | forwards | time (s) | time / beam |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for name in names:
        mean = average_reports(reports[name])
        summary[name] = mean
        print(f"| {name} | {mean['distinct_2']:.3f} | {mean['distinct_4']:.3f} | {mean['self_bleu']:.1f} | "
              f"{mean['mean_logprob']:.2f} | {forwards[name]} | {seconds[name]:.1f} | {seconds[name] / base:.2f} |")
    plot(summary, Path(args.plot), args.model)
    print(f"\nplot: {args.plot}")


def plot(summary: dict[str, dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, mean in summary.items():
        axis.scatter(mean["distinct_2"], mean["mean_logprob"], s=60)
        axis.annotate(name, (mean["distinct_2"], mean["mean_logprob"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axis.set_xlabel("distinct-2 (higher = more diverse)")
    axis.set_ylabel("mean log-probability of the 8 outputs")
    axis.set_title(f"Diverse Beam Search vs beam search ({model})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
