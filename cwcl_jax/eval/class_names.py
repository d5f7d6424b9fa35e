"""Class names for zero-shot tasks from a file (TFDS ClassLabel names: cwcl_jax.data.labels)."""

import json
from pathlib import Path


def load_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a `.json` file (a list of strings) or a text file (one per line).

    Order matters: name i is class label i. Raises ValueError naming the path and the
    problem for a missing, empty, malformed or duplicated list.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class-name file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    names = _parse_json(text, path) if path.suffix == ".json" else _parse_lines(text, path)
    if not names:
        raise ValueError(f"class-name file {path}: no class names")
    _check_unique(names, str(path))
    return tuple(names)


def _parse_json(text: str, path: Path) -> list[str]:
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"class-name file {path}: not valid JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"class-name file {path}: expected a JSON list of non-empty strings")
    return [n.strip() for n in names]


def _parse_lines(text: str, path: Path) -> list[str]:
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(
                f"class-name file {path}: line {number} is blank (one class name per line)"
            )
    if lines and lines[0].lstrip().startswith(("[", "{")):
        raise ValueError(
            f"class-name file {path}: looks like JSON; name the file *.json to parse it as a list"
        )
    return [line.strip() for line in lines]


def _check_unique(names: list[str], source: str) -> None:
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"class-name file {source}: {name!r} (entry {i}) appears twice")
        seen.add(name)
