"""Prompt template sets: the ones shipped in `cwcl_jax/templates/`, or a user's file.

A template set is a JSON list of strings (or a text file, one template per line), each
with exactly one `{}` where the class name goes.
"""

import json
from importlib import resources
from pathlib import Path

_PACKAGE = "cwcl_jax.templates"


def available_template_sets() -> list[str]:
    """Names of the template sets shipped with the package (e.g. "imagenet_80")."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))


def load_templates(spec: str) -> tuple[str, ...]:
    """Templates from a shipped set name (see `available_template_sets`) or a file path."""
    packaged = resources.files(_PACKAGE) / f"{spec}.json"
    if packaged.is_file():
        return parse_templates(packaged.read_text(encoding="utf-8"), source=f"{spec}.json")
    path = Path(spec)
    if not path.is_file():
        shipped = ", ".join(available_template_sets())
        raise ValueError(
            f"template set {spec!r} is neither a shipped set ({shipped}) nor an existing file"
        )
    return parse_templates(path.read_text(encoding="utf-8"), source=str(path))


def parse_templates(text: str, *, source: str) -> tuple[str, ...]:
    """Parses and validates a template list: JSON when `source` ends in .json, else lines."""
    if source.endswith(".json"):
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise ValueError(f"{source}: expected a JSON list of template strings")
    else:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not templates:
        raise ValueError(f"{source}: no templates")
    for i, template in enumerate(templates):
        rest = template.replace("{}", "", 1)
        if "{}" not in template or "{" in rest or "}" in rest:
            raise ValueError(
                f"{source}: template {i} ({template!r}) must contain exactly one '{{}}' "
                "placeholder and no other braces"
            )
    if len(set(templates)) != len(templates):
        duplicate = next(t for t in templates if templates.count(t) > 1)
        raise ValueError(f"{source}: template {duplicate!r} appears more than once")
    return tuple(templates)
