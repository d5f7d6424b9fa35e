"""Random access by index to a prepared TFDS split, whatever its file format.

array_record splits are read with TFDS's own data source. TFRecord splits (how most
catalog datasets, e.g. `coco_captions`, are prepared) get an offset index built once per
split: one pass that reads each record's 12-byte header and seeks over its payload (fast on
local disks; on object stores prefer preparing with `file_format="array_record"`). Both
return examples deserialized by the dataset's own features, images left encoded.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

_HEADER = struct.Struct("<QI")  # TFRecord: uint64 length, uint32 masked CRC of the length.
_FOOTER_BYTES = 4  # uint32 masked CRC of the payload


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a TFDS dataset, readable by example index.

    `read(indices)` returns one dict per index, decoded by the dataset's features except
    for the paths in `encoded` (images), which stay bytes so the pipeline decodes them and
    can name an undecodable record.
    """

    name: str  # e.g. "cwcl_shapes/tiny:1.0.0 train"
    features: tfds.features.FeaturesDict
    records: Any  # a sequence of examples: __len__, __getitem__, __getitems__
    encoded: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)

    def read(self, indices: Sequence[int]) -> list[dict]:
        return list(self.records.__getitems__([int(i) for i in indices]))


def open_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    encoded: Sequence[str] = (),
    prepare: bool = True,
    manual_dir: str | None = None,
) -> Split:
    """Opens `split` of the TFDS dataset `name` ("dataset[/config][:version]").

    Args:
      name: registered TFDS name; `cwcl_jax.data` registers this project's builders.
      split: split name, slices allowed ("train[:90%]").
      data_dir: TFDS data dir; None means TFDS's default (~/tensorflow_datasets).
      encoded: "/"-separated feature paths (Image features) to leave as encoded bytes.
      prepare: build the dataset if it is not prepared yet (process 0 first when several
        processes share the data dir). Builders that download do so only here.
      manual_dir: TFDS manual_dir for builders that read user-provided files.
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"data.name={name!r} is not a TFDS dataset (import cwcl_jax.data registers "
            f"this project's builders): {e}"
        ) from None
    _check_features(builder.info.features, encoded, name)
    if not builder.is_prepared():
        _prepare(builder, name, data_dir, prepare, manual_dir)
    decoders = _skip_decoding(encoded)
    label = f"{builder.info.full_name} {split}"
    try:
        records = builder.as_data_source(split, decoders=decoders)
    except NotImplementedError:  # no random access for this file format: index it ourselves
        records = TfrecordRecords(builder.info, split, decoders)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{builder.info.full_name}: cannot open split {split!r}: {e}") from None
    if len(records) == 0:
        raise ValueError(f"{label} has no examples")
    return Split(
        name=label, features=builder.info.features, records=records, encoded=tuple(encoded)
    )


def _check_features(features: tfds.features.FeaturesDict, encoded: Sequence[str], name: str):
    for path in encoded:
        feature = feature_at(features, path, name)
        if not isinstance(feature, tfds.features.Image):
            raise ValueError(
                f"{name}: feature {path!r} is a {type(feature).__name__}, expected an Image"
            )


def feature_at(features: tfds.features.FeaturesDict, path: str, name: str) -> Any:
    """The feature at a "/"-separated path; ValueError listing the features if absent."""
    feature = features
    for part in path.split("/"):
        if isinstance(feature, tfds.features.Sequence):
            feature = feature.feature
        if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature:
            raise ValueError(
                f"{name} has no feature {path!r}; its features are {_feature_paths(features)}"
            )
        feature = feature[part]
    return feature


def _feature_paths(features: Any, prefix: str = "") -> list[str]:
    """Every leaf feature's "/"-separated path, for error messages."""
    if isinstance(features, tfds.features.Sequence):
        features = features.feature
    if not isinstance(features, tfds.features.FeaturesDict):
        return [prefix.rstrip("/")]
    return [path for key in features for path in _feature_paths(features[key], f"{prefix}{key}/")]


def _skip_decoding(paths: Sequence[str]) -> dict:
    decoders: dict = {}
    for path in paths:
        *parents, leaf = path.split("/")
        node = decoders
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return decoders


def _prepare(builder, name: str, data_dir: str | None, prepare: bool, manual_dir: str | None):
    where = data_dir or "the default TFDS data dir"
    if not prepare:
        raise ValueError(
            f"dataset {name} is not prepared in {where} and data.prepare is False; prepare it "
            f"with `tfds build {name} --data_dir=... --file_format=array_record`"
        )
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    # One process builds into a shared data dir; the others wait, then build only if their
    # data dir is a local disk that still lacks it.
    if jax.process_index() == 0:
        logging.info("Preparing dataset %s in %s (first use).", name, where)
        builder.download_and_prepare(download_config=config)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"cwcl_jax.data prepared {name}")
        if not builder.is_prepared():
            builder.download_and_prepare(download_config=config)


class TfrecordRecords:
    """Random access to a TFRecord split through an offset index of its records."""

    def __init__(self, info: tfds.core.DatasetInfo, split: str, decoders: Mapping):
        self._features = info.features
        self._decoders = decoders
        self._shards: list[tuple[str, np.ndarray, np.ndarray]] = []  # (file, offsets, lengths)
        for instruction in info.splits[split].file_instructions:
            offsets, lengths = index_tfrecord(instruction.filename)
            window = slice(instruction.skip, instruction.skip + instruction.take)
            self._shards.append((instruction.filename, offsets[window], lengths[window]))
        self._starts = np.cumsum([0] + [len(o) for _, o, _ in self._shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        serialized: dict[int, bytes] = {}
        for shard in np.unique(shard_of):
            filename, offsets, lengths = self._shards[shard]
            with _open_for_random_reads(filename) as f:
                for position in np.flatnonzero(shard_of == shard):
                    row = indices[position] - self._starts[shard]
                    f.seek(int(offsets[row]))
                    serialized[position] = f.read(int(lengths[row]))
        return [
            self._features.deserialize_example_np(serialized[p], decoders=self._decoders)
            for p in range(len(indices))
        ]


def _open_for_random_reads(filename: str):
    # GFile refills a large read-ahead buffer after every seek; local files read unbuffered.
    if "://" in filename:
        return tf.io.gfile.GFile(filename, "rb")
    return open(filename, "rb", buffering=0)  # noqa: SIM115  (closed by the caller's with)


def index_tfrecord(filename: str) -> tuple[np.ndarray, np.ndarray]:
    """Payload offsets and lengths (int64 `[num_records]`) of a TFRecord file."""
    offsets, lengths = [], []
    with tf.io.gfile.GFile(filename, "rb") as f:
        size, position = f.size(), 0
        while position < size:
            header = f.read(_HEADER.size)
            if len(header) != _HEADER.size:
                raise ValueError(f"{filename}: truncated TFRecord header at byte {position}")
            (length, _) = _HEADER.unpack(header)
            offsets.append(position + _HEADER.size)
            lengths.append(length)
            position += _HEADER.size + length + _FOOTER_BYTES
            if position > size:
                raise ValueError(
                    f"{filename}: truncated TFRecord payload of record {len(offsets) - 1} "
                    f"(byte {offsets[-1]})"
                )
            f.seek(position)
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)
