"""Eval task configs (ml_collections) -> validated task specs, with files loaded up front.

Every problem (an unknown kind or modality, a missing template set, a malformed class-name
file) is raised here, naming the config field, before any batch is embedded.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from cwcl_jax.eval import class_names as class_names_lib
from cwcl_jax.eval import templates as templates_lib

MODALITIES = ("image", "text", "speech")
KINDS = ("zeroshot", "retrieval")


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
    """Classify `query_modality` embeddings against prompts built from class names."""

    name: str
    label_key: str
    query_modality: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    ks: tuple[int, ...] = (1, 5)
    per_template: bool = True


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
    """Retrieve `gallery_modality` rows from `query_modality` rows of the same batches."""

    name: str
    query_modality: str
    gallery_modality: str
    item_id_key: str | None = None
    ks: tuple[int, ...] = (1, 5, 10)


Task = ZeroShotTask | RetrievalTask


def zeroshot_task(
    label_key: str,
    query_modality: str,
    *,
    templates: str = "simple_image",
    class_names: str = "tfds",
    readable: bool = False,
    ks: tuple[int, ...] = (1, 5),
    per_template: bool = True,
) -> ml_collections.ConfigDict:
    """Config of a zero-shot task (see docs/evaluation.md for the fields)."""
    return ml_collections.ConfigDict(
        {
            "kind": "zeroshot",
            "label_key": label_key,
            "query_modality": query_modality,
            "templates": templates,
            "class_names": class_names,
            "readable": readable,
            "ks": tuple(ks),
            "per_template": per_template,
        }
    )


def retrieval_task(
    query_modality: str,
    gallery_modality: str,
    *,
    item_id_key: str | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> ml_collections.ConfigDict:
    """Config of a retrieval task (see docs/evaluation.md for the fields)."""
    return ml_collections.ConfigDict(
        {
            "kind": "retrieval",
            "query_modality": query_modality,
            "gallery_modality": gallery_modality,
            "item_id_key": item_id_key,
            "ks": tuple(ks),
        }
    )


def resolve_tasks(
    tasks_config: Mapping[str, Any],
    *,
    dataset_info: Any = None,
    modalities: Iterable[str] | None = None,
    field: str = "config.eval.tasks",
) -> list[Task]:
    """Validated specs for every task in `tasks_config` (name -> task ConfigDict).

    dataset_info: the eval dataset's tfds DatasetInfo, needed when class_names is "tfds".
    modalities: the modalities the eval batches carry, to reject tasks that need others.
    """
    if not tasks_config:
        raise ValueError(f"{field} is empty: configure at least one zeroshot or retrieval task")
    known = tuple(modalities) if modalities is not None else MODALITIES
    return [
        _resolve_one(name, task, dataset_info, known, f"{field}.{name}")
        for name, task in tasks_config.items()
    ]


def _resolve_one(name, task, dataset_info, modalities, field) -> Task:
    kind = task.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{field}.kind is {kind!r}; expected one of {KINDS}")
    ks = _check_ks(task.get("ks"), f"{field}.ks")
    if kind == "retrieval":
        return RetrievalTask(
            name=name,
            query_modality=_check_modality(task, "query_modality", modalities, field),
            gallery_modality=_check_modality(task, "gallery_modality", modalities, field),
            item_id_key=task.get("item_id_key"),
            ks=ks,
        )
    query_modality = _check_modality(task, "query_modality", modalities, field)
    if "text" not in modalities:
        raise ValueError(f"{field}: zero-shot prompts need a text tower; the data has {modalities}")
    label_key = task.get("label_key")
    if not label_key:
        raise ValueError(f"{field}.label_key is required for a zeroshot task")
    try:
        templates = templates_lib.load_templates(task.get("templates", "simple_image"))
    except ValueError as e:
        raise ValueError(f"{field}.templates: {e}") from None
    return ZeroShotTask(
        name=name,
        label_key=label_key,
        query_modality=query_modality,
        class_names=_load_class_names(task, label_key, dataset_info, field),
        templates=templates,
        ks=ks,
        per_template=bool(task.get("per_template", True)),
    )


def _load_class_names(task, label_key, dataset_info, field) -> tuple[str, ...]:
    source = task.get("class_names", "tfds")
    try:
        if source != "tfds":
            return class_names_lib.load_class_names(source)
        if dataset_info is None:
            raise ValueError("class_names='tfds' needs the eval dataset's DatasetInfo")
        from cwcl_jax.data import labels  # imports TFDS; only needed for this source

        names = labels.class_names(dataset_info, label_key, readable=task.get("readable", False))
        return tuple(names)
    except ValueError as e:
        raise ValueError(f"{field}.class_names: {e}") from None


def _check_modality(task, key, modalities, field) -> str:
    value = task.get(key)
    if value not in modalities:
        raise ValueError(f"{field}.{key} is {value!r}; the eval data has {tuple(modalities)}")
    return value


def _check_ks(ks, field) -> tuple[int, ...]:
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"{field} must be a non-empty tuple of positive ints, got {ks!r}")
    return tuple(ks)
