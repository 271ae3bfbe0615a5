"""What one ``swiftfusion generate`` run makes: rows (a prompt each, from ``--prompt`` or
``--prompts-file``), images per row, the seed and file name of every image, and how the rows are
grouped into pipeline calls. Pure data: no torch, no files written.

Seeds: image ``i`` of the run (rows in order, a row's images inner) gets ``--seed + i``; a row of a
prompts file that gives its own ``seed`` has images ``seed, seed + 1, ...``. Each image is drawn
from its own generator, so an image depends on its prompt and seed only, never on its batch or on
how the batch is split across ranks.

Names (``--output-dir``): with one row, ``000``, ``001``, ... per image; with several rows, the row's
number (``003``), or row and image (``003-01``) when rows have several images; numbers get more
digits when there are more than 1000 rows or 100 images a row.
"""

from __future__ import annotations

import csv
import io
import json
import sys
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
class OutputImage:
    """One image (or video) of the run: its row, its index inside the row, its seed and its file
    name (no suffix)."""

    row: int
    index: int
    seed: int
    name: str


@dataclass(frozen=True)
class Batch:
    """The rows of one pipeline call (consecutive rows of one size and kind of negative prompt) and
    their images, in order."""

    rows: list[int]
    images: list[OutputImage] = field(default_factory=list)


def read_prompts_file(path: str) -> list[Row]:
    """Rows of a prompts file: plain text (a prompt a line), CSV with a ``prompt`` column, or JSONL
    (an object a line); CSV and JSONL rows may give ``negative_prompt``, ``seed``, and ``size``
    ("WxH") or ``height`` and ``width``; other CSV columns are ignored (named on stderr), unknown
    JSONL keys are an error. Raises naming the file, the line and the problem."""
    where = f"--prompts-file {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: the byte-order mark spreadsheets write
    except OSError as error:
        raise ValueError(f"{where}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ValueError(f"{where}: a CSV file needs a header with a 'prompt' column, got {reader.fieldnames}")
        ignored = [name for name in reader.fieldnames if name not in ROW_KEYS]
        if ignored:
            print(f"swiftfusion: {where}: ignoring the columns {', '.join(ignored)}", file=sys.stderr)
        records = []
        for record in reader:
            values = {k: v for k, v in record.items() if k in ROW_KEYS and v not in (None, "")}
            records.append((reader.line_num, values))
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
    if (height is None) != (width is None):
        raise ValueError(f"{where}: give both 'height' and 'width' (or 'size'), not one")
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


def image_plan(rows: list[Row], num_images: int, seed: int) -> list[OutputImage]:
    """Every image of the run, in order, with its seed and file name."""
    def number(n: int, count: int, least: int) -> str:
        return f"{n:0{max(least, len(str(count - 1)))}d}"

    images = []
    for r, row in enumerate(rows):
        for k in range(num_images):
            i = r * num_images + k
            if len(rows) == 1:
                name = number(k, num_images, 3)
            else:
                name = number(r, len(rows), 3) + (f"-{number(k, num_images, 2)}" if num_images > 1 else "")
            images.append(OutputImage(r, k, (row.seed + k) if row.seed is not None else seed + i, name))
    return images


def batches(rows: list[Row], images: list[OutputImage], batch_size: int) -> list[Batch]:
    """Rows grouped into pipeline calls of at most ``batch_size`` rows; a call holds consecutive
    rows that share a size and whether they have a negative prompt (one call takes one size, and a
    negative prompt for all its prompts or for none)."""
    by_row: dict[int, list[OutputImage]] = {}
    for image in images:
        by_row.setdefault(image.row, []).append(image)
    result: list[Batch] = []
    key = None
    for r, row in enumerate(rows):
        row_key = (row.height, row.width, row.negative_prompt is not None)
        if not result or row_key != key or len(result[-1].rows) == batch_size:
            result.append(Batch([]))
            key = row_key
        result[-1].rows.append(r)
        result[-1].images.extend(by_row.get(r, []))
    return result
