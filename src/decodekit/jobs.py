"""Batch jobs from a JSONL file: ``decodekit generate --input prompts.jsonl``.

Every input line is read on its own: a line that is not UTF-8, not JSON or has no usable
``"prompt"`` is an error *of that line* (named by its number), not of the job. Output records
carry the input's line number (``"line"``, 1-based) and its ``"id"`` when it has one, so a job
can be resumed (``--resume``: lines already in ``--output`` are skipped) and every error record
(``{"line": ..., "error": ...}``, with ``--on-error skip``) points at its input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from decodekit.errors import DecodeKitError, InputError


@dataclass(frozen=True)
class JobLine:
    """One non-empty input line: its 1-based number, its ``id`` (if any), and either its
    prompt or why it cannot be decoded."""

    number: int
    id: object = None
    prompt: str | None = None
    error: str | None = None

    def record(self) -> dict:
        return {"line": self.number} | ({"id": self.id} if self.id is not None else {})


def check_input_path(path: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise InputError(f"--input {path}: no such file")
    if not file.is_file():
        raise InputError(f"--input {path}: not a file")
    return file


def read_job(path: str) -> Iterator[JobLine]:
    """Every non-empty line of ``path`` as a :class:`JobLine` (lazily; bytes, not text, so one
    bad encoding spoils one line only)."""
    file = check_input_path(path)
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield JobLine(number, error=f"not UTF-8 text (byte {error.start})")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield JobLine(number, error=f"not JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                yield JobLine(number, error='not a JSON object with a "prompt"')
                continue
            ident = record.get("id")
            prompt = record.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                yield JobLine(number, ident, error='needs a non-empty string field "prompt"')
                continue
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                yield JobLine(number, ident, error='"prompt" holds a lone surrogate (not valid Unicode)')
                continue
            yield JobLine(number, ident, prompt)


def done_lines(output: str) -> set[int]:
    """Line numbers already written to ``output`` (a JSONL file of records), for ``--resume``.
    A truncated last record (an interrupted write) is cut off the file, so its line is decoded
    again and appended whole."""
    done: set[int] = set()
    file = Path(output)
    if not file.is_file():
        return done
    data = file.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(file, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    with open(file, encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                done.add(record["line"])
    return done


def decode_lines(decoder, lines: list[JobLine], strategy, options, constraint) -> Iterator[tuple[JobLine, dict]]:
    """Decode ``lines`` together; a line the batch cannot decode is retried alone, so one bad
    prompt (e.g. too long for the model) costs only its own record."""
    try:
        results = decoder.generate([line.prompt for line in lines], strategy, options=options, constraint=constraint)
        for line, result in zip(lines, results):
            yield line, line.record() | result.to_dict()
        return
    except DecodeKitError:
        if len(lines) == 1:
            raise
    for line in lines:
        try:
            result = decoder.generate(line.prompt, strategy, options=options, constraint=constraint)
            yield line, line.record() | result.to_dict()
        except DecodeKitError as error:
            yield line, line.record() | {"error": str(error)}
