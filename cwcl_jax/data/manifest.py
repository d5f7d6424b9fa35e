"""TFDS builder `cwcl_manifest`: the user's own image-text or audio-text pairs.

One command converts a manifest (see `manifest_records` for the format) into a dataset:

    python -m cwcl_jax.data.manifest pairs.jsonl --data_dir ~/tensorflow_datasets --name mine

after which `tfds.load("cwcl_manifest/mine", data_dir=..., split="train")` reads it (with
`cwcl_jax.data` imported), as does the pipeline, by index. It is prepared as TFRecord
(TFDS's default); `file_format="array_record"` is accepted as for any builder. Images are
validated by decoding and stored as RGB; audio is read (WAV: stdlib, FLAC: soundfile),
mixed to mono and resampled to 16 kHz int16. Bad records are skipped and counted in the
dataset's metadata, or raise, by `bad_records`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cwcl_jax.data import audio_files, builder_utils
from cwcl_jax.data import manifest_records as records_lib

_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")
_MANUAL_NAMES = ("manifest.jsonl", "manifest.csv")


@dataclasses.dataclass
class ManifestConfig(tfds.core.BuilderConfig):
    """`manifest`: a .jsonl/.csv path ("" = manifest.jsonl or .csv in manual_dir)."""

    manifest: str = ""
    modality: str = "image"

    def __post_init__(self):
        if self.modality not in records_lib.MODALITIES:
            raise ValueError(
                f"ManifestConfig.modality must be one of {records_lib.MODALITIES}, "
                f"got {self.modality!r}"
            )


class CwclManifest(tfds.core.GeneratorBasedBuilder):
    """Image-text or audio-text pairs listed in a local JSONL or CSV manifest.

    bad_records="skip" skips and counts unusable records (metadata["bad_records"]);
    "raise" stops at the first one, naming its manifest line and media path.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [ManifestConfig(name="image"), ManifestConfig(name="audio", modality="audio")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put manifest.jsonl or manifest.csv (fields: image or audio path, text, optional "
        "split) in manual_dir, or use build_manifest_dataset(manifest_path, data_dir, name)."
    )

    def __init__(self, *, bad_records: str = "skip", **kwargs):
        self.bad_records = builder_utils.check_bad_records_mode(bad_records)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        modality = self.builder_config.modality
        media = (
            tfds.features.Image(shape=(None, None, 3))
            if modality == "image"
            else tfds.features.Audio(
                shape=(None,), dtype=np.int16, sample_rate=audio_files.SAMPLE_RATE
            )
        )
        return self.dataset_info_from_configs(
            description=f"{modality}-text pairs from a local manifest.",
            features=tfds.features.FeaturesDict(
                {modality: media, "text": tfds.features.Text(), "path": tfds.features.Text()}
            ),
            supervised_keys=(modality, "text"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manifest = config.manifest or _manifest_in(dl_manager.manual_dir)
        bad = builder_utils.BadRecords(self.bad_records)
        records = records_lib.read_records(manifest, config.modality, bad)
        if not records:
            raise ValueError(f"manifest {manifest} has no usable records")
        if config.modality == "audio":
            _check_audio_decodable(records)
        splits = sorted({record.split for record in records})
        return {
            split: self._generate_examples([r for r in records if r.split == split], bad)
            for split in splits
        }

    def _generate_examples(self, records: list[records_lib.Record], bad: builder_utils.BadRecords):
        modality = self.builder_config.modality
        load = _load_image if modality == "image" else audio_files.load_16k_int16
        examples = builder_utils.ordered_parallel_map(
            lambda r: (r, builder_utils.load_or_reason(load, r.path)), records
        )
        for record, (media, problem) in examples:
            if problem is not None:
                bad.report(f"{record.location} ({record.media})", problem)
                continue
            yield record.location, {modality: media, "text": record.text, "path": record.media}
        # Updated after each split; the metadata is written once all splits are done.
        self.info.metadata["bad_records"] = bad.summary()


def _manifest_in(manual_dir) -> str:
    for name in _MANUAL_NAMES:
        path = os.path.join(os.fspath(manual_dir), name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"no manifest: set ManifestConfig.manifest or put one of {_MANUAL_NAMES} in the "
        f"manual_dir {manual_dir}"
    )


def _check_audio_decodable(records: list[records_lib.Record]) -> None:
    """Fails before any work when non-WAV audio is listed and soundfile is missing."""
    if audio_files.soundfile_available():
        return
    for record in records:
        if not record.path.lower().endswith(".wav"):
            raise ImportError(audio_files.FLAC_HELP.format(path=record.path))


def _load_image(path: str) -> bytes | np.ndarray:
    """The file's bytes when they are 8-bit RGB JPEG/PNG, else RGB uint8 [H, W, 3]."""
    with open(path, "rb") as f:
        raw = f.read()
    try:  # uint8 output: 16-bit PNGs are scaled down by TF.
        image = tf.io.decode_image(raw, expand_animations=False).numpy()
    except tf.errors.OpError as e:
        raise ValueError(f"undecodable image: {_tf_error_text(e)}") from e
    if image.shape[-1] == 3 and _is_jpeg_or_8bit_png(raw):
        return raw
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    return np.ascontiguousarray(rgb)


def _tf_error_text(error: tf.errors.OpError) -> str:
    """The human part of a TF op error: no {{function_node ...}} prefix, no [Op:...]."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\]", "", text).strip()


def _is_jpeg_or_8bit_png(raw: bytes) -> bool:
    if raw.startswith(b"\xff\xd8\xff"):
        return True
    # PNG IHDR: bit depth at byte 24.
    return raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) > 24 and raw[24] == 8


def build_manifest_dataset(
    manifest_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    name: str,
    *,
    modality: str | None = None,
    bad_records: str = "skip",
    overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
    """Converts a manifest into the prepared dataset `cwcl_manifest/<name>` under data_dir.

    modality: "image" | "audio" | None (detected from the manifest's fields). An existing
    dataset of that name is reused unless overwrite=True. Returns the prepared builder.
    """
    manifest = os.path.abspath(os.fspath(manifest_path))
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest_path {manifest} does not exist")
    if not _NAME.match(name):
        raise ValueError(f"name {name!r} must be letters, digits, '_', '.', '+' or '-'")
    config = ManifestConfig(
        name=name,
        manifest=manifest,
        modality=modality or records_lib.detect_modality(manifest),
    )
    builder = CwclManifest(config=config, data_dir=os.fspath(data_dir), bad_records=bad_records)
    mode = tfds.download.GenerateMode
    download_config = tfds.download.DownloadConfig(
        download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS
    )
    builder.download_and_prepare(download_config=download_config)
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=build_manifest_dataset.__doc__)
    parser.add_argument("manifest", help="a .jsonl or .csv manifest of media paths and texts")
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write to")
    parser.add_argument("--name", required=True, help="dataset config name: cwcl_manifest/NAME")
    parser.add_argument("--modality", choices=records_lib.MODALITIES, default=None)
    parser.add_argument("--bad_records", choices=builder_utils.BAD_RECORD_MODES, default="skip")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    args = parser.parse_args(argv)
    builder = build_manifest_dataset(
        args.manifest,
        args.data_dir,
        args.name,
        modality=args.modality,
        bad_records=args.bad_records,
        overwrite=args.overwrite,
    )
    builder_utils.print_build_summary(builder)
    print(f"read with tfds.load('cwcl_manifest/{args.name}', data_dir='{args.data_dir}')")


if __name__ == "__main__":
    main()
