"""Wall-clock of decodekit vs transformers ``generate`` on the same model, settings and outputs.

    python bench/bench_engine.py                       # 4-layer d=256 random GPT-2
    python bench/bench_engine.py --model stdlib-code   # the embedded code model

Every row decodes the same prompt with both libraries in the same process, alternating,
``--repeats`` times, and reports the median wall time of each and their ratio
(decodekit / transformers: < 1 means decodekit is faster). EOS is suppressed until the last
token (``min_new_tokens = max_new_tokens``) so that both decode exactly the same number of steps;
"same" says whether the outputs are token-for-token identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

import decodekit


def random_gpt2(seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=1024)
    return transformers.GPT2LMHeadModel(config).eval()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn):
    """Seconds ``fn`` takes (on a GPU: until the device has finished its queued work)."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    synchronize()
    start = clock()
    out = fn()
    synchronize()
    return clock() - start, out


def run(model, prompt: list[int], strategy: str, beams: int, new_tokens: int, repeats: int) -> dict:
    decoder = decodekit.load(model, device=model.device)
    ids = torch.tensor([prompt], device=model.device)
    hf_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     num_beams=beams, attention_mask=torch.ones_like(ids), pad_token_id=0)
    config = decodekit.Greedy() if strategy == "greedy" else decodekit.BeamSearch(num_beams=beams)
    ours_times, theirs_times = [], []
    for _ in range(repeats):
        with torch.inference_mode():
            t_theirs, out = timed(lambda: model.generate(ids, **hf_kwargs))
        t_ours, result = timed(lambda: decoder.generate(prompt, config, max_new_tokens=new_tokens, min_new_tokens=new_tokens))
        theirs_times.append(t_theirs)
        ours_times.append(t_ours)
    same = out[0, len(prompt):].tolist() == result.best.token_ids
    ours, theirs = statistics.median(ours_times), statistics.median(theirs_times)
    return dict(strategy=f"{strategy}" + (f" ({beams} beams)" if beams > 1 else ""), prompt=len(prompt),
                theirs=theirs, ours=ours, ratio=ours / theirs, same=same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-gpt2", help="random-gpt2 or an embedded/local model")
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (wall clock, synchronised)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: process CPU time (steadier on a busy machine, use with --threads 1)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "random-gpt2":
        model = random_gpt2()
    else:
        model = decodekit.load(args.model).model.model
    model = model.to(args.device, getattr(torch, args.dtype))
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    rows = []
    # warm-up: first calls pay one-off costs (allocator, kernels) in both libraries
    run(model, torch.randint(3, vocab, (16,), generator=generator).tolist(), "greedy", 1, 4, 1)
    for length in args.prompt_lengths:
        prompt = torch.randint(3, vocab, (length,), generator=generator).tolist()
        rows.append(run(model, prompt, "greedy", 1, args.new_tokens, args.repeats))
        rows.append(run(model, prompt, "beam", args.beams, args.new_tokens, args.repeats))
    print(f"model: {args.model} on {args.device} in {args.dtype}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{args.new_tokens} new tokens, torch threads {torch.get_num_threads()}, {args.clock} clock, median of {args.repeats}")
    print()
    print("| strategy | prompt | transformers (s) | decodekit (s) | ratio | same output |")
    print("|---|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['strategy']} | {r['prompt']} | {r['theirs']:.3f} | {r['ours']:.3f} | {r['ratio']:.2f}x | {'yes' if r['same'] else 'NO'} |")


if __name__ == "__main__":
    main()
