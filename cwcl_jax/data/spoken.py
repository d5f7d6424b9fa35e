"""TFDS builder `cwcl_spoken`: spoken commands and keywords synthesized with espeak-ng.

Configs: `intents` (SLURP-style commands, label `intent`) and `keywords` (single Speech
Commands words, label `keyword`), each with a `_tiny` variant for tests. Every example is a
pure function of (seed, split, index), so the dataset is deterministic however many
synthesis workers run; labels cycle through the classes, so every split is balanced.
Prepared as TFRecord (TFDS's default), so `tfds.load` reads it and the pipeline reads it by
index (`sources.open_split`); `file_format="array_record"` is accepted as for any builder.

    import cwcl_jax.data, tensorflow_datasets as tfds
    test = tfds.load("cwcl_spoken/intents", data_dir=..., split="test")
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cwcl_jax.data import audio_files, builder_utils, espeak, spoken_text

_TASKS = {"intents": ("intent", spoken_text.INTENTS), "keywords": ("keyword", spoken_text.KEYWORDS)}
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class SpokenConfig(tfds.core.BuilderConfig):
    """What to synthesize: `task` ("intents" | "keywords"), split sizes and the seed."""

    task: str = "intents"
    num_train: int = 4000
    num_test: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.task not in _TASKS:
            raise ValueError(
                f"SpokenConfig.task must be one of {sorted(_TASKS)}, got {self.task!r}"
            )
        for field in ("num_train", "num_test"):
            if getattr(self, field) < 1:
                raise ValueError(f"SpokenConfig.{field} must be >= 1, got {getattr(self, field)}")

    @property
    def label_key(self) -> str:
        return _TASKS[self.task][0]

    @property
    def class_names(self) -> tuple[str, ...]:
        return _TASKS[self.task][1]


def synthesize_example(config: SpokenConfig, split: str, index: int) -> dict:
    """Example `index` of `split`: {"audio": int16 [T] at 16 kHz, "text", label_key: int}."""
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
    label = index % len(config.class_names)
    name = config.class_names[label]
    text = spoken_text.intent_utterance(name, rng) if config.task == "intents" else name
    waveform = espeak.synthesize(text, espeak.random_voice(rng))
    return {"audio": audio_files.to_int16(waveform), "text": text, config.label_key: label}


class CwclSpoken(tfds.core.GeneratorBasedBuilder):
    """Spoken commands (intents) and keywords, synthesized offline by espeak-ng."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SpokenConfig(name="intents", task="intents", num_train=3400, num_test=510),
        SpokenConfig(name="keywords", task="keywords", num_train=3500, num_test=700),
        SpokenConfig(name="intents_tiny", task="intents", num_train=34, num_test=17),
        SpokenConfig(name="keywords_tiny", task="keywords", num_train=35, num_test=35),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "intents"

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            description=f"{config.task} spoken by espeak-ng with varied voices, 16 kHz.",
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Audio(
                        shape=(None,), dtype=np.int16, sample_rate=audio_files.SAMPLE_RATE
                    ),
                    "text": tfds.features.Text(),
                    config.label_key: tfds.features.ClassLabel(names=config.class_names),
                }
            ),
            supervised_keys=("audio", "text"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        espeak.require_espeak()  # Fail before any work, with the install command.
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, num_examples: int):
        config = self.builder_config
        examples = builder_utils.ordered_parallel_map(
            lambda index: synthesize_example(config, split, index), range(num_examples)
        )
        yield from enumerate(examples)
