"""Admission: between steps, the engine's pending requests join the running ones (mixed into
:class:`~decodekit.engine.core.Engine`, whose queue, partitions and speculative groups it
fills).

Greedy and sampling groups of one kind are prefilled together, in the forward of the running
rows' step where the lean step can (:class:`~decodekit.engine.step.FusedPrefill`), else in a
forward of their own; other groups are prefilled alone; speculative requests start a run of
their proposer, join the running one, or wait for it.
"""

from __future__ import annotations

import torch

from decodekit.engine.beam_pool import beam_pool_key
from decodekit.engine.group import PlainGroup, deliver_error
from decodekit.engine.limits import model_error
from decodekit.engine.placement import Refused, place, pool_key, prefill, started, target_partition
from decodekit.engine.request import RequestHandle
from decodekit.engine.speculative import SpeculativeGroup
from decodekit.engine.step import FusedPrefill


class Admission:
    def _admit(self) -> None:
        """Admit pending entries in arrival order while rows are free. Greedy/sampling groups
        of one kind are prefilled together (one forward per kind), whatever their order."""
        with self._lock:
            pending = list(self._pending)
        admitted = []
        pooled: dict[tuple, list[PlainGroup]] = {}
        plain: list[PlainGroup] = []
        for entry in pending:
            handles = entry if isinstance(entry, list) else entry.handles
            if all(h.done for h in handles):  # aborted while queued
                admitted.append(entry)
                continue
            rows = self.running_rows + sum(g.rows for group in pooled.values() for g in group) + sum(g.rows for g in plain)
            need = entry.rows if isinstance(entry, PlainGroup) else len(handles) * getattr(handles[0].request.strategy, "n", 1)
            if rows and rows + need > self.max_rows:
                break
            if isinstance(entry, PlainGroup):
                if entry.poolable:
                    pooled.setdefault(pool_key(entry), []).append(entry)
                elif self.pool_beams and entry.beam_poolable:  # separately arrived beam searches: prefilled and decided together
                    pooled.setdefault(beam_pool_key(entry), []).append(entry)
                else:
                    plain.append(entry)
                admitted.append(entry)
            elif self._admit_speculative(handles):
                admitted.append(entry)
        # Subtle: where the lean step can, greedy/sampling groups are prefilled in the forward of
        # the partition they join (one set of kernel calls per step, not two); they decide their
        # first token in the next step.
        target = target_partition(self.model, self._partitions) if getattr(self.model, "can_fuse_prefill", False) else None
        if target is not None and pooled:
            self._fused = FusedPrefill(target, list(pooled.values()))
        else:
            together = getattr(self.model, "batch_invariant", True)  # else rotary or positions set by the batch
            for groups in pooled.values():
                for batch in [groups] if together else [[g] for g in groups]:
                    self._admit_groups(batch)
        for group in plain:
            self._admit_groups([group])
        if admitted:
            with self._lock:
                self._pending = [e for e in self._pending if not any(e is a for a in admitted)]

    def _admit_groups(self, groups: list[PlainGroup]) -> None:
        """Prefill groups in one forward (greedy/sampling groups of one kind, or one group),
        then their rows join the running state (:mod:`decodekit.engine.placement`)."""
        state = prefill(self.model, groups, self.clock)
        if state is not None:
            self._place(groups, state)

    def _place(self, groups: list[PlainGroup], state) -> None:
        """:func:`~decodekit.engine.placement.place`, a failure contained: where the model
        refused the rows (:class:`~decodekit.engine.placement.Refused`, the running state
        unchanged) only ``groups`` fail; any other failure also fails the partition they were
        joining, whose rows may no longer match its requests. Every other request goes on."""
        before, target = list(self._partitions), target_partition(self.model, self._partitions)
        try:
            place(self.model, self._partitions, groups, state, self.pool_beams)
        except Refused as refused:
            for group in groups:
                deliver_error(group.handles, model_error(self.model, "admission", refused.error))
        except Exception as error:
            failed = model_error(self.model, "admission", error)
            broken = [p for p in self._partitions if p is target or not any(p is b for b in before)]
            for group in groups:
                deliver_error(group.handles, failed)
            for partition in broken:
                for member in partition.groups:
                    deliver_error(member.handles, failed)
            self._partitions = [p for p in self._partitions if not any(p is b for b in broken)]

    def _place_fused(self, fused: FusedPrefill) -> None:
        """After a step whose forward prefilled ``fused``'s prompts: set their groups up and
        place their rows, one pool kind at a time (prefilled apart if the forward did not run)."""
        if fused.state is None:
            for groups in fused.kinds:
                self._admit_groups(groups)
            return
        at = 0
        for groups in fused.kinds:
            count = sum(len(g.prompts) for g in groups)
            rows = torch.arange(at, at + count, device=fused.state.logits.device)
            part = fused.state if len(fused.kinds) == 1 else self.model.fork(fused.state, rows)
            at += count
            try:
                started(self.model, groups, part)
            except Exception as error:
                for group in groups:
                    deliver_error(group.handles, model_error(self.model, "prefill", error))
                continue
            self._place(groups, part)

    def _admit_speculative(self, handles: list[RequestHandle]) -> bool:
        """Start a speculative group if its proposer is free, or join the running group that
        holds it where it accepts these requests; else they stay queued."""
        from decodekit.speculative import make_proposer

        key = handles[0].request.strategy.speculative
        if key in self._busy:
            group = next((g for g in self._speculative if g.key == key), None)
            if group is None or not group.accepts(handles):
                return False
            try:
                group.join(handles)
            except Exception as error:  # these requests fail alone; the run goes on
                deliver_error(handles, model_error(self.model, "prefill", error))
            return True
        try:
            if key not in self._proposers:
                self._proposers[key] = make_proposer(key, self.model)
                while len(self._proposers) > self.max_proposers:
                    oldest = next((k for k in self._proposers if k not in self._busy and k != key), None)
                    if oldest is None:  # every other one is in use: the bound holds again once one is free
                        break
                    del self._proposers[oldest]
            self._proposers.move_to_end(key)
            group = SpeculativeGroup(self.model, handles, self._proposers[key])
        except Exception as error:
            deliver_error(handles, model_error(self.model, "speculative set-up", error))
            return True
        group.key = key
        self._busy.add(key)
        self._speculative.append(group)
        return True
