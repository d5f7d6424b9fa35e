"""Parsing a user's pair manifest (JSONL or CSV) into records.

A manifest holds one pair per line: a media path under `image` or `audio`, a caption or
transcript under `text`, and optionally a `split` (default "train"). Relative media paths
are resolved against the manifest's folder.

    {"image": "photos/0001.jpg", "text": "a dog on a beach"}
    image,text,split
    photos/0002.jpg,two cats on a sofa,test
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterator

from cwcl_jax.data.builder_utils import BadRecords

MODALITIES = ("image", "audio")
DEFAULT_SPLIT = "train"
_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Record:
    """One manifest line: `location` "manifest:line", `media` as written, `path` resolved."""

    location: str
    media: str
    path: str
    text: str
    split: str


def manifest_format(path: str) -> str:
    """ "jsonl" or "csv" from the file name; ValueError for anything else."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"manifest {path}: expected a .jsonl or .csv file, got {suffix!r}")


def detect_modality(path: str) -> str:
    """Whether the manifest pairs text with "image" or "audio" (from its first record)."""
    keys = _first_record_keys(path)
    found = [modality for modality in MODALITIES if modality in keys]
    if len(found) != 1:
        raise ValueError(
            f"manifest {path}: its records must have exactly one of the fields "
            f"{MODALITIES} (found fields {sorted(keys)}); pass modality= to choose"
        )
    return found[0]


def _first_record_keys(path: str) -> set[str]:
    with open(path, newline="", encoding="utf-8") as f:
        if manifest_format(path) == "csv":
            return set(csv.DictReader(f).fieldnames or ())
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    return set(json.loads(line))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ValueError(f"manifest {path}:{line_number}: not a JSON object") from e
    raise ValueError(f"manifest {path} has no records")


def read_records(path: str, modality: str, bad: BadRecords) -> list[Record]:
    """Parses every line; lines without a usable media path, text or split go to `bad`."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    folder = os.path.dirname(os.path.abspath(path))
    records = []
    for line, fields in _raw_rows(path, modality, bad):
        record = _to_record(f"{path}:{line}", fields, modality, folder, bad)
        if record is not None:
            records.append(record)
    return records


def _raw_rows(path: str, modality: str, bad: BadRecords) -> Iterator[tuple[int, dict]]:
    """(line number, field dict) per record, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        if manifest_format(path) == "csv":
            reader = csv.DictReader(f)
            missing = {modality, "text"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"manifest {path}: the CSV header {reader.fieldnames} lacks the "
                    f"column(s) {sorted(missing)}"
                )
            for row in reader:
                yield reader.line_num, row
            return
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                bad.report(f"{path}:{line_number}", f"invalid JSON ({e.msg})")
                continue
            if not isinstance(fields, dict):
                bad.report(f"{path}:{line_number}", "not a JSON object")
                continue
            yield line_number, fields


def _to_record(
    location: str, fields: dict, modality: str, folder: str, bad: BadRecords
) -> Record | None:
    media, text = fields.get(modality), fields.get("text")
    split = fields.get("split") or DEFAULT_SPLIT
    if not isinstance(media, str) or not media.strip():
        bad.report(location, f"missing {modality!r} path")
    elif not isinstance(text, str) or not text.strip():
        bad.report(f"{location} ({media})", "empty text")
    elif not isinstance(split, str) or not _SPLIT_NAME.match(split):
        bad.report(f"{location} ({media})", f"invalid split name {split!r} (use e.g. train, test)")
    else:
        path = os.path.join(folder, os.path.expanduser(media.strip()))
        return Record(location, media, os.path.normpath(path), text.strip(), split)
    return None
