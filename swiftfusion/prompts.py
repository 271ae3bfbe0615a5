"""What one ``swiftfusion generate`` run makes: rows (a prompt each, from ``--prompt`` or
``--prompts-file``), images per row, the seed and file name of every image, and how the rows are
grouped into pipeline calls. Pure data: no torch, no files written.

Seeds: image ``i`` of the run (rows in order, a row's images inner) gets ``--seed + i``; a row of a
prompts file that gives its own ``seed`` has images ``seed, seed + 1, ...``. Each image is drawn
from its own generator, so an image depends on its prompt and seed only, never on its batch or on
how the batch is split across ranks.

Names (``--output-dir``): with one row, ``000``, ``001``, ... per image; with several rows, the row's
number (``003``), or row and image (``003-01``) when rows have several images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

ROW_KEYS = ("prompt", "negative_prompt", "seed", "height", "width", "size")


@dataclass(frozen=True)
class Row:
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class Image:
    """One output: its row, its index inside the row, its seed and its file name (no suffix)."""

    row: int
    index: int
    seed: int
    name: str


@dataclass(frozen=True)
class Call:
    """One pipeline call: consecutive rows of the same size and kind of negative prompt."""

    rows: list[int]
    images: list[Image] = field(default_factory=list)


def read_prompts_file(path: str) -> list[Row]:
    """Rows of a prompts file: plain text (a prompt a line), CSV with a ``prompt`` column, or JSONL
    (an object a line); CSV and JSONL rows may give ``negative_prompt``, ``seed``, and ``size``
    ("WxH") or ``height`` and ``width``. Raises naming the file, the line and the problem."""
    where = f"--prompts-file {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{where}: cannot read it ({error.strerror})") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ValueError(f"{where}: a CSV file needs a header with a 'prompt' column, got {reader.fieldnames}")
        records = [(reader.line_num, {k: v for k, v in record.items() if v not in (None, "")}) for record in reader]
    elif suffix in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where} line {number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where} line {number}: expected an object like {{\"prompt\": ...}}")
            records.append((number, record))
    else:
        records = [(number, {"prompt": line.strip()}) for number, line in enumerate(text.splitlines(), 1)
                   if line.strip()]
    if not records:
        raise ValueError(f"{where}: no prompts in it")
    return [_row(record, f"{where} line {number}") for number, record in records]


def _row(record: dict, where: str) -> Row:
    unknown = sorted(set(record) - set(ROW_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(ROW_KEYS)}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    negative = record.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"{where}: 'negative_prompt' must be a string, got {negative!r}")
    seed = _integer(record.get("seed"), "seed", where, minimum=0)
    height = _integer(record.get("height"), "height", where, minimum=1)
    width = _integer(record.get("width"), "width", where, minimum=1)
    if "size" in record:
        if height is not None or width is not None:
            raise ValueError(f"{where}: give 'size' or 'height' and 'width', not both")
        width, height = parse_size(record["size"], f"{where}: 'size'")
    return Row(prompt.strip(), negative, seed, height, width)


def _integer(value, name: str, where: str, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{where}: {name!r} must be an integer >= {minimum}, got {value!r}")
    return number


def parse_size(text, what: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height)."""
    parts = str(text).lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"{what} must be WIDTHxHEIGHT (e.g. 1024x768), got {text!r}")


def image_plan(rows: list[Row], num_images: int, seed: int) -> list[Image]:
    """Every image of the run, in order, with its seed and file name."""
    images = []
    for r, row in enumerate(rows):
        for k in range(num_images):
            i = r * num_images + k
            name = f"{k:03d}" if len(rows) == 1 else f"{r:03d}" if num_images == 1 else f"{r:03d}-{k:02d}"
            images.append(Image(r, k, (row.seed + k) if row.seed is not None else seed + i, name))
    return images


def calls(rows: list[Row], images: list[Image], batch_size: int) -> list[Call]:
    """Rows grouped into pipeline calls of at most ``batch_size`` rows; a call holds consecutive
    rows that share a size and whether they have a negative prompt (one call takes one size, and a
    negative prompt for all its prompts or for none)."""
    result: list[Call] = []
    key = None
    for r, row in enumerate(rows):
        row_key = (row.height, row.width, row.negative_prompt is not None)
        if not result or row_key != key or len(result[-1].rows) == batch_size:
            result.append(Call([]))
            key = row_key
        result[-1].rows.append(r)
        result[-1].images.extend(image for image in images if image.row == r)
    return result
