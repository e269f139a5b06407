"""What a trained pair is good for, beyond its loss: does its code parse, does the draft agree.

* :func:`parse_samples`: greedy continuations of :data:`PARSE_PROMPTS` (plain ``transformers``
  ``generate``), each checked with ``ast.parse`` on its completed block (:func:`completed_block`).
* :func:`greedy_agreement`: how often the draft's most likely next token is the target's, on
  held-out code read teacher-forced (every position predicted once, both models seeing the same
  text): the rate at which a greedy draft's tokens survive verification, token by token.
* :func:`draft_acceptance`: the acceptance rate the ``draft`` proposer actually gets from the
  pair, decoding held-out prompts with decodekit's speculative greedy decoding.
"""

from __future__ import annotations

import ast

import torch

from decodekit.train.tokenizer import encode_file

PARSE_PROMPTS = (
    "def fibonacci(n):",
    "class Stack:",
    "import os\n\ndef main():",
    "def read_lines(path):",
    "def is_prime(n):",
    "class Point:\n    def __init__(self, x, y):",
    "def flatten(items):",
    "def parse_args(argv=None):",
    "for i in range(10):",
    'def merge(a, b):\n    """Merge two sorted lists."""',
)
"""Ten fixed prompts that each open a block; their continuations should complete it."""
PARSE_NEW_TOKENS = 128


def completed_block(prompt: str, continuation: str, ended: bool) -> str:
    """``prompt + continuation`` up to the end of the block the prompt opened: cut before the
    first non-blank line after the prompt that starts at column 0 (a new top-level statement;
    a comment there does not end the block). A continuation that stopped at the token limit
    (not ``ended`` by EOS) without leaving the block loses its last line, which may be cut off."""
    lines = (prompt + continuation).splitlines(keepends=True)
    first = prompt.count("\n") + 1  # lines[first:] lie wholly after the prompt
    for index in range(first, len(lines)):
        line = lines[index]
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            return "".join(lines[:index])
    if not ended and len(lines) > first:
        lines = lines[:-1]
    return "".join(lines)


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return False
    return True


@torch.no_grad()
def parse_samples(model, tokenizer, prompts=PARSE_PROMPTS, new_tokens: int = PARSE_NEW_TOKENS) -> list[dict]:
    """Per prompt: the greedy continuation, whether it ended with EOS, its completed block and
    whether that block parses."""
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)
        new_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
        ended = tokenizer.eos_token_id in new_ids
        continuation = tokenizer.decode(new_ids, skip_special_tokens=True)
        block = completed_block(prompt, continuation, ended)
        samples.append({"prompt": prompt, "continuation": continuation, "ended": ended, "block": block, "parses": parses(block)})
    return samples


@torch.no_grad()
def greedy_agreement(target, draft, tokenizer, texts: list[str], max_tokens: int = 512) -> dict:
    """The share of positions of ``texts`` (each cut to its first ``max_tokens`` tokens) where
    the draft's argmax next token equals the target's."""
    agree = total = 0
    for text in texts:
        ids = torch.tensor([encode_file(tokenizer, text)[:max_tokens]], device=target.device)
        if ids.shape[1] < 2:
            continue
        mine = target(input_ids=ids).logits[0, :-1].argmax(-1)
        theirs = draft(input_ids=ids.to(draft.device)).logits[0, :-1].argmax(-1).to(mine.device)
        agree += int((mine == theirs).sum())
        total += mine.numel()
    return {"agreement": agree / max(total, 1), "positions": total, "files": len(texts), "max_tokens_per_file": max_tokens}


def draft_acceptance(target_dir, draft_dir, texts: list[str], prompt_tokens: int = 128, new_tokens: int = 64, num_tokens: int = 4) -> dict:
    """Speculative greedy decoding of each text's first ``prompt_tokens`` tokens with the
    exported draft proposing ``num_tokens`` per step: the share of drafted tokens accepted."""
    import decodekit
    from decodekit.speculative import DraftModelConfig, Speculative

    decoder = decodekit.load(str(target_dir))
    strategy = decodekit.Greedy(speculative=Speculative("draft", DraftModelConfig(model=str(draft_dir), num_tokens=num_tokens)))
    drafted = accepted = generated = forwards = 0
    for text in texts:
        ids = decoder.encode(text[: 16 * prompt_tokens])[:prompt_tokens]  # a token is rarely over 16 characters
        result = decoder.generate(ids, strategy, max_new_tokens=new_tokens)
        stats = result.stats
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        generated, forwards = generated + stats.generated, forwards + stats.target_forwards
    return {
        "acceptance_rate": accepted / max(drafted, 1),
        "accepted_per_forward": accepted / max(forwards, 1),
        "forwards_per_token": forwards / max(generated, 1),
        "prompts": len(texts),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "num_tokens": num_tokens,
    }
