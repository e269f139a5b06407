"""decodekit against transformers ``generate`` and CTranslate2 on the CPU, same run.

    pip install -e ".[bench]" && python bench/bench_peers.py

Models: the embedded stdlib-code (Llama, 6M), a random GPT-2 4x256 and a random Llama 12x768
with a 32k vocabulary (random models get a word-level tokenizer so CTranslate2's converter can
read a vocabulary). Modes: greedy and beam 8, prompts of 32 and 512 tokens, 64 new tokens with
EOS ignored (minimum length 64), float32, ``--threads`` threads for every library. Each library
is timed in a process of its own (an idle thread pool of one library can spin while the next
runs), processes alternate library by library and repeat ``--repeats`` times; a process warms
up once and reports the median of ``--calls`` calls. The table gives each library's median
seconds per call, decodekit's time divided by each peer's, and whether the generated tokens are
identical. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIBRARIES = ("decodekit", "transformers", "ctranslate2")
MODELS = ("embedded", "gpt2-4x256", "llama-12x768")
MODES = (("greedy", 32), ("greedy", 512), ("beam8", 32), ("beam8", 512))


def build(name: str, root: Path) -> Path:
    """A checkpoint directory (HF format with a tokenizer) for ``name``."""
    import torch
    import transformers

    if name == "embedded":
        from decodekit.models import embedded_model_path

        return embedded_model_path("stdlib-code")
    out = root / name
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    if name == "gpt2-4x256":
        vocab = 6144
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=256, n_layer=4, n_head=4))
    else:
        vocab = 32000
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=12, max_position_embeddings=1024, tie_word_embeddings=False,
        ))
    model.generation_config.bos_token_id = model.config.bos_token_id = 1
    model.generation_config.eos_token_id = model.config.eos_token_id = 1
    model.generation_config.pad_token_id = model.config.pad_token_id = 0
    model.save_pretrained(out)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0", bos_token="t1", eos_token="t1")
    fast.save_pretrained(out)
    return out


def prompt_ids(length: int, vocab: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(length)
    return torch.randint(3, vocab, (length,), generator=generator).tolist()


def worker(args) -> None:
    """Load one library, warm up, time ``calls`` calls; print JSON."""
    import torch

    torch.set_num_threads(args.threads)
    path = Path(args.path)
    config = json.loads((path / "config.json").read_text())
    ids = prompt_ids(args.prompt, config["vocab_size"])
    beams = 8 if args.mode == "beam8" else 1
    new = args.new_tokens
    if args.library == "decodekit":
        import decodekit

        decoder = decodekit.load(str(path))
        strategy = decodekit.BeamSearch(num_beams=beams) if beams > 1 else decodekit.Greedy()

        def call():
            return decoder.generate(ids, strategy, max_new_tokens=new, min_new_tokens=new).sequences[0].token_ids
    elif args.library == "transformers":
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        inputs = torch.tensor([ids])

        def call():
            with torch.no_grad():
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new, min_new_tokens=new,
                                     num_beams=beams, do_sample=False, pad_token_id=0)
            return out[0, len(ids) :].tolist()
    else:
        import ctranslate2
        import transformers

        converted = Path(args.converted)
        if not (converted / "model.bin").exists():
            ctranslate2.converters.TransformersConverter(str(path)).convert(str(converted), quantization="float32", force=True)
        generator = ctranslate2.Generator(str(converted), device="cpu", intra_threads=args.threads, compute_type="float32")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        tokens = tokenizer.convert_ids_to_tokens(ids)

        def call():
            result = generator.generate_batch([tokens], max_length=new, min_length=new, beam_size=beams, include_prompt_in_result=False, sampling_topk=1)
            return result[0].sequences_ids[0]
    output = call()  # warm-up
    seconds = []
    for _ in range(args.calls):
        began = time.perf_counter()
        output = call()
        seconds.append(time.perf_counter() - began)
    print(json.dumps({"seconds": statistics.median(seconds), "tokens": output}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=2, help="processes per library and setting, alternated")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "decodekit-bench-peers"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--converted", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.threads} threads, float32, {args.new_tokens} new tokens (EOS ignored), batch 1; median seconds per call\n")
    print("| model | mode | prompt | decodekit | transformers | CTranslate2 | ÷ transformers | ÷ CTranslate2 | same tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models:
        path = build(name, root)
        for mode, length in MODES:
            times = {lib: [] for lib in LIBRARIES}
            outputs = {}
            for _ in range(args.repeats):
                for lib in LIBRARIES:
                    command = [sys.executable, __file__, "--worker", "--library", lib, "--path", str(path), "--converted", str(root / f"{name}-ct2"),
                               "--mode", mode, "--prompt", str(length), "--calls", str(args.calls), "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{lib} failed on {name} {mode} {length}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}", file=sys.stderr)
                        continue
                    record = json.loads(done.stdout.strip().splitlines()[-1])
                    times[lib].append(record["seconds"])
                    outputs[lib] = record["tokens"]
            med = {lib: statistics.median(t) if t else float("nan") for lib, t in times.items()}
            same = "yes" if len({tuple(o) for o in outputs.values()}) == 1 and len(outputs) == len(LIBRARIES) else "no"
            print(f"| {name} | {mode} | {length} | {med['decodekit']:.3f} | {med['transformers']:.3f} | {med['ctranslate2']:.3f} | "
                  f"{med['decodekit'] / med['transformers']:.2f} | {med['decodekit'] / med['ctranslate2']:.2f} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
