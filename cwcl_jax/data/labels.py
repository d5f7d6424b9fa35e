"""Class names of a dataset's label features, for zero-shot classification."""

from __future__ import annotations

import tensorflow_datasets as tfds


def class_names(
    builder_or_info: tfds.core.DatasetBuilder | tfds.core.DatasetInfo,
    label_key: str,
    *,
    readable: bool = False,
) -> list[str]:
    """Names of the ClassLabel feature `label_key`, in label-index order.

    readable=True turns identifiers into words ("alarm_set" -> "alarm set") for prompts.
    Raises ValueError naming the key when it is missing or not a ClassLabel.
    """
    info = getattr(builder_or_info, "info", builder_or_info)
    features = info.features
    if label_key not in features:
        raise ValueError(
            f"{info.full_name} has no feature {label_key!r}; its features are "
            f"{sorted(features.keys())}"
        )
    feature = features[label_key]
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ValueError(
            f"{info.full_name} feature {label_key!r} is a {type(feature).__name__}, "
            "not a ClassLabel with class names"
        )
    names = list(feature.names)
    return [name.replace("_", " ") for name in names] if readable else names
