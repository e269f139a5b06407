"""Teacher-forced scoring: the log-probs a model gives continuations it is handed
(:meth:`Decoder.score <decodekit.api.Decoder.score>`), one batched forward."""

from __future__ import annotations

import torch

from decodekit.errors import ConfigError, InputError
from decodekit.model.hf import HFLanguageModel
from decodekit.results import ScoredContinuation


def score(decoder, prompts, continuations):
    """See :meth:`decodekit.api.Decoder.score`."""
    if not isinstance(decoder.model, HFLanguageModel):
        raise ConfigError("model", type(decoder.model).__name__, "a transformers model (scoring runs one teacher-forced forward)")
    items, single = decoder._prompts(prompts)
    conts, single_cont = decoder._prompts(continuations)
    if len(items) != len(conts) or single != single_cont:
        raise InputError(f"continuations: {len(conts)} for {len(items)} prompts; give one continuation per prompt")
    prompt_ids = [decoder.encode(p) for p in items]
    tokenizer, vocab = decoder.tokenizer, decoder.model.vocab_size
    cont_ids = [
        list(tokenizer(c, add_special_tokens=False)["input_ids"]) if isinstance(c, str) and tokenizer is not None else decoder.encode(c)
        for c in conts
    ]
    for i, ids in enumerate(cont_ids):
        if not ids:
            raise InputError(f"continuations: item {i} has no tokens")
        if min(ids) < 0 or max(ids) >= vocab:
            raise InputError(f"continuations: item {i} has token ids outside [0, {vocab})")
    limit = decoder.model.max_length
    if limit is not None and max(len(p) + len(c) for p, c in zip(prompt_ids, cont_ids)) > limit:
        raise InputError(f"continuations: a prompt and its continuation exceed the model's context of {limit} tokens")
    with decoder.engine.exclusive():  # not while a step runs on the same model
        scored = forward_logprobs(decoder.model, prompt_ids, cont_ids)
    out = [ScoredContinuation(p, c, s.tolist(), float(s.sum()), decoder.decode_text(c)) for p, c, s in zip(prompt_ids, cont_ids, scored)]
    return out[0] if single else out


def prompt_logprobs(decoder, prompt_ids: list[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]] | None]:
    """Each prompt token's log-prob given the tokens before it, with the ``top`` most likely
    alternatives there (``(id, log-prob)``, most likely first): None for the first token,
    which nothing conditions. One forward, the model's raw distribution; decoder-only models."""
    if not isinstance(decoder.model, HFLanguageModel) or decoder.model.is_encoder_decoder:
        raise ConfigError("logprobs", top, "null with echo for this model (a prompt's own log-probs need a decoder-only transformers model)")
    ids = [int(t) for t in prompt_ids]
    if len(ids) < 2:
        return [None] * len(ids)
    with decoder.engine.exclusive():  # not while a step runs on the same model
        (dist,) = forward_distributions(decoder.model, [ids[:1]], [ids[1:]])
    chosen = dist.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()
    if top:
        values, indices = dist.topk(min(top, dist.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [None] + list(zip(chosen, tops))


def forward_logprobs(lm: HFLanguageModel, prompts: list[list[int]], continuations: list[list[int]]) -> list[torch.Tensor]:
    """Each continuation's per-token log-probs given its prompt, in one forward over the
    batch (right-padded; the model's raw distribution)."""
    dists = forward_distributions(lm, prompts, continuations)
    return [d.gather(1, torch.tensor(c, device=d.device)[:, None]).squeeze(1) for d, c in zip(dists, continuations)]


def forward_distributions(lm: HFLanguageModel, prompts: list[list[int]], continuations: list[list[int]]) -> list[torch.Tensor]:
    """Each continuation's ``(len, vocab)`` next-token log-probs at its positions given its
    prompt (teacher-forced), in one forward over the batch (on the CPU)."""
    return [logits.log_softmax(-1) for logits in forward_logits(lm, prompts, continuations)]


def forward_logits(lm: HFLanguageModel, prompts: list[list[int]], continuations: list[list[int]]) -> list[torch.Tensor]:
    """Each continuation's ``(len, vocab)`` raw next-token logits at its positions given its
    prompt (teacher-forced), in one forward over the batch (on the CPU, float32)."""
    device = lm.model.device
    rows = len(prompts)
    with torch.no_grad():
        if lm.is_encoder_decoder:
            width = max(map(len, prompts))
            enc = torch.full((rows, width), lm.pad_token_id or 0, dtype=torch.long)
            enc_mask = torch.zeros_like(enc)
            length = max(map(len, continuations))
            dec = torch.full((rows, length), lm.pad_token_id or 0, dtype=torch.long)
            for r, (p, c) in enumerate(zip(prompts, continuations)):
                enc[r, : len(p)], enc_mask[r, : len(p)] = torch.tensor(p), 1
                dec[r, : len(c)] = torch.tensor([lm.decoder_start_token_id, *c[:-1]])
            logits = lm.model(input_ids=enc.to(device), attention_mask=enc_mask.to(device), decoder_input_ids=dec.to(device)).logits
            offsets = [0] * rows
        else:
            width = max(len(p) + len(c) for p, c in zip(prompts, continuations))
            ids = torch.full((rows, width), lm.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (p, c) in enumerate(zip(prompts, continuations)):
                ids[r, : len(p) + len(c)], mask[r, : len(p) + len(c)] = torch.tensor(p + c), 1
            logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            offsets = [len(p) - 1 for p in prompts]
        logits = logits.float()
    out = []
    for r, c in enumerate(continuations):
        positions = torch.arange(offsets[r], offsets[r] + len(c), device=logits.device)
        out.append(logits[r, positions].cpu())
    return out


def path_scores(decoder, request, output, sequences: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each returned sequence of ``request``: ``(raw logits, processed log-probs)``, both
    ``(tokens, vocab)``, along its own path: one teacher-forced forward for the model's logits,
    then the request's processors (its options' and its constraint's, fresh) replayed token by
    token as the engine applied them (to log-probs for the searches that score log-probs, to
    logits for the others), renormalised: ``token_logprobs[t]`` is entry ``[t, token]`` of the
    second."""
    model, options = decoder.model, request.options
    empty = (torch.empty(0, model.vocab_size), torch.empty(0, model.vocab_size))
    out: list = [empty] * len(sequences)
    todo = [i for i, s in enumerate(sequences) if s]
    if not todo:
        return out
    with decoder.engine.exclusive():
        raw = forward_logits(model, [list(request.prompt)] * len(todo), [sequences[i] for i in todo])
    if model.is_encoder_decoder:
        prefix, encoder_ids = [int(model.decoder_start_token_id)], torch.tensor([list(request.prompt)])
    else:
        prefix, encoder_ids = list(request.prompt), None
    for i, logits in zip(todo, raw):
        extra = list(request.processors()) if request.processors is not None else []
        for processor in extra:
            if hasattr(processor, "bind"):
                processor.bind([request.index], 1)
        chain = options.processors(len(prefix), options.eos(model.eos_token_ids), model.vocab_size, encoder_ids=encoder_ids, extra=extra)
        for processor in chain.stateful:
            processor.reset(1)
        history = torch.tensor([prefix + sequences[i]])
        processed = []
        for t, token in enumerate(sequences[i]):
            base = logits[t : t + 1].log_softmax(-1) if output.scores_logprobs else logits[t : t + 1].clone()
            scores = chain(history[:, : len(prefix) + t], base) if len(chain) else base
            processed.append(scores.log_softmax(-1)[0])  # the processed distribution token_logprobs come from
            for processor in chain.stateful:
                processor.advance(None, torch.tensor([token]))
        out[i] = (logits, torch.stack(processed))
    return out
