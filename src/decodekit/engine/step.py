"""One engine step of the plain rows (everything but admission and speculation).

Per partition (rows sharing one model state): every group decides from its slice of the
logits; one host sync reads every group's flags; groups settle (finished requests are
delivered); retired rows leave the state; one forward advances the rest; holes are compacted
now and then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from decodekit.engine.group import PlainGroup, deliver, deliver_error
from decodekit.engine.limits import model_error


class Partition:
    """Groups whose rows share one model state (one forward per step), in row order."""

    def __init__(self, state, groups: list):
        self.state, self.groups = state, groups


class FusedPrefill:
    """New poolable groups whose prefill runs in the same forward as the step of the partition
    they will join (``target``): ``kinds`` are their group lists, one per pool kind, in order;
    after the step, ``state`` holds every prompt's prefilled rows (None: not run, prefill them
    apart)."""

    def __init__(self, target: Partition, kinds: list[list[PlainGroup]]):
        self.target, self.kinds = target, kinds
        self.prompts = [p for groups in kinds for g in groups for p in g.prompts]
        self.max_new = max(g.options.max_new_tokens for groups in kinds for g in groups)
        self.state = None


class FusedBlocks:
    """Speculative runs' blocks verified in the forward of ``target``'s step (None: in one
    forward of their own, :func:`verify_blocks`): ``entries`` are ``(group, block)`` pairs;
    after the step, ``logits`` holds each block's logits (None: the forward did not run,
    verify them apart), ``seconds`` the forward's time, ``error`` what it raised."""

    def __init__(self, target: Partition, entries: list[tuple]):
        self.target, self.entries = target, entries
        self.logits: list | None = None
        self.seconds = 0.0
        self.error: BaseException | None = None


def verify_blocks(model, blocks: FusedBlocks, clock: Clock) -> None:
    """One forward verifying every block of ``blocks`` (speculative runs with no plain rows to
    share a forward with)."""
    began = time.perf_counter()
    try:
        _, blocks.logits = model.advance_fused(None, None, None, blocks=[(g.run.state, b.inputs, b.parents) for g, b in blocks.entries])
    except Exception as error:
        blocks.error = error
    blocks.seconds = time.perf_counter() - began
    clock.model_seconds += blocks.seconds


@dataclass
class Clock:
    """Seconds spent inside model calls (the engine's overhead is the rest of a step)."""

    model_seconds: float = 0.0


def step_partitions(model, partitions: list[Partition], clock: Clock, step_count: int, fused: FusedPrefill | None = None,
                    blocks: FusedBlocks | None = None, settled: Callable[[], None] | None = None) -> list[Partition]:
    """One step of every plain row: decide, the one host sync, settle (deliver what finished;
    then ``settled()``: the step's events are out), then drop retired rows and one forward per
    partition (``fused``: with the prefill of new groups in the forward of the partition they
    join; ``blocks``: with speculative runs' verification). Returns the partitions that go on."""
    decided = []  # (group, flags or None)
    sizes: dict[int, int] = {}  # each group's rows this step (a pool's shrink in settle)
    for partition in partitions:
        offset = 0
        for group in partition.groups:
            sizes[id(group)] = group.rows
            logits = partition.state.logits[offset : offset + group.rows]
            kind = getattr(group, "attention", None)  # what the group's search reads, if anything
            weights = partition.state.extra.get("hidden" if kind == "hidden" else "attention") if kind else None
            offset += group.rows
            try:
                decided.append((group, group.decide(logits) if weights is None else group.decide(logits, weights)))
            except Exception as error:
                group.error = error
                decided.append((group, None))
    flags = [f for _, f in decided if f is not None]
    values = torch.cat(flags).tolist() if flags else []  # the one host sync per step
    keeps: dict[int, list[int] | None] = {}
    at = 0
    for group, f in decided:
        if f is None:
            deliver(group)
            keeps[id(group)] = []
            continue
        count = f.numel()
        keeps[id(group)] = group.settle(values[at : at + count])
        at += count
    if settled is not None and decided:
        settled()  # e.g. wake a server's event loop: it sends these tokens during the forward
    kept_partitions = []
    for partition in partitions:
        joining = fused if fused is not None and fused.target is partition else None
        verifying = blocks if blocks is not None and blocks.target is partition else None
        try:
            if advance_partition(model, partition, keeps, sizes, clock, step_count, joining, verifying):
                kept_partitions.append(partition)
        except Exception as error:
            if verifying is not None:
                verifying.error = error
            failed = list(partition.groups) + ([g for groups in joining.kinds for g in groups] if joining else [])
            for group in failed:
                deliver_error(group.handles, model_error(model, "a decoding step", error))
            if joining is not None:
                joining.kinds = []
    return kept_partitions


def advance_partition(model, partition: Partition, keeps: dict[int, list[int] | None], sizes: dict[int, int], clock: Clock, step_count: int,
                      fused: FusedPrefill | None = None, blocks: FusedBlocks | None = None) -> bool:
    """Drop retired rows, then one forward for the rest (and ``fused``'s prompts, whose state
    it sets, and ``blocks``, whose logits it sets); False if no row is left."""
    state = partition.state
    device = state.logits.device
    groups, rows, offset, changed = [], [], 0, False
    for group in partition.groups:
        keep = keeps[id(group)]
        if keep is None:
            rows.append(torch.arange(offset, offset + sizes[id(group)], device=device))
            groups.append(group)
        elif keep:
            rows.append(torch.tensor(keep, dtype=torch.long, device=device) + offset)
            groups.append(group)
            changed = True
        else:
            changed = True
        offset += sizes[id(group)]
    if not groups:
        return False
    if changed:
        model.select(state, torch.cat(rows))
        partition.groups = groups
    parents, tokens, idle, offset = [], [], [], 0
    any_parents = any(g.keep_parents() is not None for g in groups)
    for group in groups:
        if group.free:  # a pool's slots that no request holds
            idle.append(torch.tensor(group.free, dtype=torch.long, device=device) + offset)
        if any_parents:
            p = group.keep_parents()
            parents.append(p + offset if p is not None else torch.arange(offset, offset + group.rows, device=device))
        tokens.append(group.next_tokens())
        offset += group.rows
    began = time.perf_counter()
    parents = torch.cat(parents) if any_parents else None
    tokens = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
    prompts = fused.prompts if fused is not None and fused.prompts else None
    idle = (torch.cat(idle) if len(idle) > 1 else idle[0]) if idle else None
    # the free slots' logits are never read: a model that can skips their arithmetic
    skip = {"idle": idle} if idle is not None and getattr(model, "skips_idle_rows", False) else {}
    if blocks is not None:
        verified = [(group.run.state, block.inputs, block.parents) for group, block in blocks.entries]
        new, blocks.logits = model.advance_fused(state, parents, tokens, prompts, fused.max_new if prompts else 0, verified, **skip)
        if prompts:
            fused.state = new
    elif prompts:
        fused.state = model.advance_and_start(state, parents, tokens, prompts, fused.max_new, **skip)
    else:
        model.advance(state, parents, tokens, **skip)
    seconds = time.perf_counter() - began
    clock.model_seconds += seconds
    if blocks is not None:
        blocks.seconds = seconds
    if idle is not None and hasattr(model, "release"):
        # Subtle: the forward made every row's new slot real, free ones too; a free slot left
        # real would grow by one a step for as long as it stays free, and compaction, which
        # keeps the longest row's slots, could then never shorten the cache.
        model.release(state, idle)
    maybe_compact(model, partition, step_count)
    return True


def drop_aborted(model, partitions: list[Partition]) -> list[Partition]:
    """Remove the rows of aborted requests now, without a forward (``live_rows()`` of each
    group: None all stay, a list the local rows that stay). Returns the partitions left."""
    kept = []
    for partition in partitions:
        device = partition.state.logits.device
        rows, groups, offset, changed = [], [], 0, False
        for group in partition.groups:
            size, live = group.rows, group.live_rows()
            if live is None:
                rows.append(torch.arange(offset, offset + size, device=device))
                groups.append(group)
            else:
                changed = True
                if live:
                    group.keep_rows(live)
                    rows.append(torch.tensor(live, dtype=torch.long, device=device) + offset)
                    groups.append(group)
            offset += size
        if not groups:
            continue
        if changed:
            model.select(partition.state, torch.cat(rows))
            partition.groups = groups
        kept.append(partition)
    return kept


def maybe_compact(model, partition: Partition, step_count: int) -> None:
    """Squeeze out the holes that merged and retired rows leave once they are over an eighth
    of the shared length (checked every 4 steps): every step attends over, and every merge
    and retirement copies, the whole length, so holes cost on every step (the shared length
    otherwise grows by one slot a step forever). Measured with ``bench/bench_server.py
    --requests 600 --peer none``: 539-634 tok/s with the earlier "twice the real length"
    rule, 905 with this one."""
    state = partition.state
    extra = state.extra
    alone = len(partition.groups) == 1 and isinstance(partition.groups[0], PlainGroup)
    if alone or not hasattr(model, "compact") or "mask" not in extra:
        return  # one group never merged: its only holes are its prompts' padding
    length = extra["length"]
    if length < 64 or step_count % 4:
        return
    real = int(extra["mask"][:, :length].sum(-1).max())
    if length > real + real // 8 + 8:
        model.compact(state)
        # each row's real slots now end at the new length; generated ones are the last t
        state.prompt_length = max(0, extra["length"] - max(g.fed() for g in partition.groups))
