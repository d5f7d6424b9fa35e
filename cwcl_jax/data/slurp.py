"""TFDS builder `cwcl_slurp`: SLURP (Bastianelli et al., 2020) from its released files.

manual_dir is the SLURP release: `dataset/slurp/{train,devel,test}.jsonl` (and
`train_synthetic.jsonl`) from the SLURP repository, and `audio/slurp_real/*.flac` (and
`audio/slurp_synth/`) from its audio archives. Every recording is one example: `audio`
(int16, 16 kHz), `text` (the sentence), `intent` and `scenario` labels with their names.
Prepared as TFRecord (TFDS's default), read by `tfds.load("cwcl_slurp/real", ...)` and by
the pipeline, by index; `file_format="array_record"` is accepted as for any builder.

FLAC needs `soundfile`; a `.wav` file with the same stem beside a `.flac` is used instead
when present, so converted copies work without it. One command:

    python -m cwcl_jax.data.slurp --slurp_dir ~/slurp --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cwcl_jax.data import audio_files, builder_utils

_SPLIT_FILES = {"train": "train.jsonl", "validation": "devel.jsonl", "test": "test.jsonl"}
_SYNTHETIC_FILE = "train_synthetic.jsonl"
_AUDIO_FOLDERS = {False: "slurp_real", True: "slurp_synth"}


@dataclasses.dataclass(frozen=True)
class Recording:
    """One example to be: where it is listed and what it holds."""

    location: str  # "jsonl path:line".
    file: str  # As named in the jsonl, relative to its audio folder.
    path: str  # The file to decode: the .wav copy if there is one, else `file`.
    text: str
    intent: str
    scenario: str
    slurp_id: int


@dataclasses.dataclass
class SlurpConfig(tfds.core.BuilderConfig):
    """`synthetic`: add the synthesized train recordings (train_synthetic.jsonl)."""

    synthetic: bool = False


class CwclSlurp(tfds.core.GeneratorBasedBuilder):
    """SLURP spoken language understanding: recordings, transcripts, intents, scenarios.

    bad_records="skip" skips and counts unusable recordings (metadata["bad_records"]);
    "raise" stops at the first one, naming its jsonl line and audio file.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SlurpConfig(name="real", description="Real recordings (headset and far-field)."),
        SlurpConfig(name="real_and_synth", synthetic=True, description="Plus synthetic train."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Clone https://github.com/pswietojanski/slurp (dataset/slurp/*.jsonl), run its "
        "scripts/download_audio.sh there and unpack the archives with "
        "`tar -xzf audio/slurp_real.tar.gz -C audio` (and slurp_synth.tar.gz), so that "
        "manual_dir holds dataset/slurp/train.jsonl and audio/slurp_real/*.flac."
    )

    def __init__(self, *, bad_records: str = "skip", **kwargs):
        self.bad_records = builder_utils.check_bad_records_mode(bad_records)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Audio(
                        shape=(None,), dtype=np.int16, sample_rate=audio_files.SAMPLE_RATE
                    ),
                    "text": tfds.features.Text(),
                    # Names come from the jsonl files, set when the dataset is built.
                    "intent": tfds.features.ClassLabel(),
                    "scenario": tfds.features.ClassLabel(),
                    "slurp_id": np.int64,
                    "recording": tfds.features.Text(),
                }
            ),
            supervised_keys=("audio", "text"),
            homepage="https://github.com/pswietojanski/slurp",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        root = os.fspath(dl_manager.manual_dir)
        bad = builder_utils.BadRecords(self.bad_records)
        splits = {
            split: read_recordings(root, names, bad)
            for split, names in _split_sources(config.synthetic).items()
        }
        everything = [r for recordings in splits.values() for r in recordings]
        _check_decodable(everything)
        self.info.features["intent"].names = sorted({r.intent for r in everything})
        self.info.features["scenario"].names = sorted({r.scenario for r in everything})
        return {split: self._generate_examples(recs, bad) for split, recs in splits.items()}

    def _generate_examples(self, recordings: list[Recording], bad: builder_utils.BadRecords):
        loaded = builder_utils.ordered_parallel_map(
            lambda r: (r, builder_utils.load_or_reason(audio_files.load_16k_int16, r.path)),
            recordings,
        )
        for recording, (audio, problem) in loaded:
            if problem is not None:
                bad.report(f"{recording.location} ({recording.file})", problem)
                continue
            yield (
                f"{recording.location}:{recording.file}",
                {
                    "audio": audio,
                    "text": recording.text,
                    "intent": recording.intent,
                    "scenario": recording.scenario,
                    "slurp_id": recording.slurp_id,
                    "recording": recording.file,
                },
            )
        self.info.metadata["bad_records"] = bad.summary()


def _split_sources(synthetic: bool) -> dict[str, list[str]]:
    sources = {split: [name] for split, name in _SPLIT_FILES.items()}
    if synthetic:
        sources["train"].append(_SYNTHETIC_FILE)
    return sources


def read_recordings(root: str, jsonl_names: list[str], bad: builder_utils.BadRecords):
    """Recordings of the jsonl files `dataset/slurp/<name>` under the SLURP folder `root`."""
    recordings = []
    for name in jsonl_names:
        path = _release_file(root, name)
        audio_folder = os.path.join(root, "audio", _AUDIO_FOLDERS[name == _SYNTHETIC_FILE])
        recordings.extend(_recordings_of(path, audio_folder, bad))
    return recordings


def _release_file(root: str, jsonl_name: str) -> str:
    """The path of `dataset/slurp/<jsonl_name>`; FileNotFoundError saying how to get it."""
    path = os.path.join(root, "dataset", "slurp", jsonl_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SLURP file {path} is missing. {CwclSlurp.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    return path


def _recordings_of(
    path: str, audio_folder: str, bad: builder_utils.BadRecords
) -> Iterator[Recording]:
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location = f"{path}:{line_number}"
            try:
                text, intent, scenario, slurp_id, files = _parse_entry(line)
            except ValueError as e:
                bad.report(location, str(e))
                continue
            for name in files:
                media = os.path.join(audio_folder, name)
                wav = os.path.splitext(media)[0] + ".wav"
                audio = wav if os.path.exists(wav) else media
                yield Recording(location, name, audio, text, intent, scenario, slurp_id)


def _parse_entry(line: str) -> tuple[str, str, str, int, list[str]]:
    """(sentence, intent, scenario, slurp_id, recording files) of one jsonl line."""
    try:
        entry = json.loads(line)
        text, intent = entry["sentence"].strip(), entry["intent"]
        scenario = entry.get("scenario") or intent.split("_")[0]
        files = [recording["file"] for recording in entry["recordings"]]
        slurp_id = int(entry.get("slurp_id", -1))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"malformed SLURP entry ({e!r})") from e
    if not text:
        raise ValueError("empty sentence")
    if not all(isinstance(value, str) for value in (intent, scenario, *files)):
        raise ValueError("malformed SLURP entry (intent, scenario and files must be strings)")
    return text, intent, scenario, slurp_id, files


def _check_decodable(recordings: list[Recording]) -> None:
    """Fails before any work when FLAC must be read and soundfile is missing."""
    if audio_files.soundfile_available():
        return
    for recording in recordings:
        if not recording.path.endswith(".wav") and os.path.exists(recording.path):
            raise ImportError(audio_files.FLAC_HELP.format(path=recording.path))


def build_slurp_dataset(
    slurp_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    synthetic: bool = False,
    bad_records: str = "skip",
    overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
    """Prepares `cwcl_slurp/real` (or `/real_and_synth`) from the SLURP release folder."""
    for names in _split_sources(synthetic).values():
        for name in names:  # Checked here: TFDS's own check only says the folder is empty.
            _release_file(os.fspath(slurp_dir), name)
    config = "real_and_synth" if synthetic else "real"
    builder = CwclSlurp(config=config, data_dir=os.fspath(data_dir), bad_records=bad_records)
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(slurp_dir),
            download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS,
        )
    )
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=build_slurp_dataset.__doc__)
    parser.add_argument("--slurp_dir", required=True, help="folder with dataset/ and audio/")
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write to")
    parser.add_argument("--synthetic", action="store_true", help="add the synthetic train set")
    parser.add_argument("--bad_records", choices=builder_utils.BAD_RECORD_MODES, default="skip")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    args = parser.parse_args(argv)
    builder = build_slurp_dataset(
        args.slurp_dir,
        args.data_dir,
        synthetic=args.synthetic,
        bad_records=args.bad_records,
        overwrite=args.overwrite,
    )
    builder_utils.print_build_summary(builder)


if __name__ == "__main__":
    main()
