"""Admitting prefilled rows: one prefill for a batch of groups, then their rows join a running
state: the pool of their kind (greedy and sampling rows, vectorised across requests: into free
slots of requests that left where there are enough, else appended) or the first partition,
merged where the model allows, else a partition of their own."""

from __future__ import annotations

import time

import torch

from decodekit.engine.beam_pool import BeamPool, beam_pool_key
from decodekit.engine.group import PlainGroup, deliver_error
from decodekit.engine.limits import model_error
from decodekit.engine.pool import RowPool
from decodekit.engine.step import Partition


class Refused(Exception):
    """The model could not take new rows into a running state (``error``: why, e.g. memory);
    merging and inserting build what they need before changing anything, so the running
    state is as it was and only the new requests fail."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def merged(model, first, second, at: int | None = None):
    """``model.merge(first, second, at)``, its failure a :class:`Refused`."""
    try:
        return model.merge(first, second) if at is None else model.merge(first, second, at)
    except Exception as error:
        raise Refused(error) from error


def pool_key(group: PlainGroup) -> tuple:
    """Greedy and sampling rows share a pool; different EOS sets or top-logprob counts do not."""
    return (group.eos, group.options.top_logprobs)


def prefill(model, groups: list[PlainGroup], clock):
    """One forward prefilling every prompt of ``groups`` (fanned out to each group's width);
    the state, or None after delivering the model's error to every group."""
    prompts = [p for g in groups for p in g.prompts]
    began = time.perf_counter()
    try:
        kind = groups[0].attention  # a group that reads attention is prefilled alone
        record = {"attention": kind} if kind is not None else {}
        state = model.start(prompts, max(g.options.max_new_tokens for g in groups), **record)
        started(model, groups, state)
        return state
    except Exception as error:
        for g in groups:
            deliver_error(g.handles, model_error(model, "prefill", error))
        return None
    finally:
        clock.model_seconds += time.perf_counter() - began


def started(model, groups: list[PlainGroup], state) -> None:
    """Set ``groups`` up on their prefilled ``state`` (their prompts' rows, in order): fan
    out to each group's width, build each group's history and processors."""
    if len(groups) == 1:
        groups[0].start(state)
        return
    if any(g.width > 1 for g in groups):
        fan, at = [], 0
        for g in groups:
            for _ in g.prompts:
                fan += [at] * g.width
                at += 1
        model.select(state, torch.tensor(fan, dtype=torch.long, device=state.logits.device))
    for g in groups:
        g.start(state, fanned=True)


def target_partition(model, partitions: list[Partition]) -> Partition | None:
    """The running partition that new poolable rows join (:func:`place`), if any."""
    mergeable = [p for p in partitions if "record" not in p.state.extra]
    return mergeable[0] if getattr(model, "can_merge", False) and mergeable else None


def place(model, partitions: list[Partition], groups: list[PlainGroup], state, pool_beams: bool = True) -> None:
    """The rows of ``groups`` (prefilled in ``state``, in order) join ``partitions``: poolable
    ones their kind's pool, others as groups of their own."""
    first = groups[0]
    if first.attention is not None:  # its forwards record attention: a state of its own
        partitions.append(Partition(state, list(groups)))
        return
    partition = target_partition(model, partitions)
    if pool_beams and first.beam_poolable:
        _place_beams(model, partitions, partition, groups, state)
        return
    if not first.poolable:
        if partition is not None:
            partition.state = merged(model, partition.state, state)
            partition.groups.extend(groups)
        else:
            partitions.append(Partition(state, list(groups)))
        return
    key = pool_key(first)
    member, offset = _pool_of(partition, RowPool, key)
    if member is not None:
        if len(member.free) >= state.rows and hasattr(model, "insert"):
            slots = sorted(member.free)[: state.rows]
            rows = torch.tensor(slots, dtype=torch.long, device=state.logits.device) + offset
            try:
                inserted = model.insert(partition.state, state, rows)
            except Exception as error:
                raise Refused(error) from error
            if inserted:  # only the new rows are copied
                at = 0
                for group in groups:
                    member.add(group, slots[at : at + group.rows])
                    at += group.rows
                return
        _join(model, partition, member, offset, groups, state)
        return
    reuse = getattr(model, "can_merge", False) and hasattr(model, "insert")
    pool = RowPool(key, first.context.eos_token_ids, first.context.pad_token_id, first.context.device, first.options.top_logprobs, reuse)
    _start(model, partitions, partition, pool, groups, state)


def _place_beams(model, partitions: list[Partition], partition: Partition | None, groups: list[PlainGroup], state) -> None:
    """Beam-search groups of one key join that key's :class:`BeamPool` in ``partition`` (their
    rows after the pool's), or start one."""
    key = beam_pool_key(groups[0])
    member, offset = _pool_of(partition, BeamPool, key)
    if member is not None:
        _join(model, partition, member, offset, groups, state)
    else:
        _start(model, partitions, partition, BeamPool(key), groups, state)


def _pool_of(partition: Partition | None, kind: type, key) -> tuple:
    """``partition``'s pool of ``kind`` and ``key`` and the offset of its rows, or ``(None, 0)``."""
    offset = 0
    for member in partition.groups if partition is not None else ():
        if isinstance(member, kind) and member.key == key:
            return member, offset
        offset += member.rows
    return None, 0


def _join(model, partition: Partition, pool, offset: int, groups: list[PlainGroup], state) -> None:
    """``groups`` (prefilled in ``state``) join ``pool``: their rows right after its rows."""
    partition.state = merged(model, partition.state, state, offset + pool.rows)
    for group in groups:
        pool.add(group)


def _start(model, partitions: list[Partition], partition: Partition | None, pool, groups: list[PlainGroup], state) -> None:
    """A new ``pool`` takes ``groups``; its rows join ``partition`` (after its rows) or start one."""
    for group in groups:
        pool.add(group)
    if partition is not None:
        partition.state = merged(model, partition.state, state)
        partition.groups.append(pool)
    else:
        partitions.append(Partition(state, [pool]))
