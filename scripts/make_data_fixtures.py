"""Writes the tiny dataset fixtures under tests/fixtures/ (run from the repository root).

    .venv/bin/python scripts/make_data_fixtures.py

- manifest_tiny/: images (RGB PNG, JPEG, grayscale PNG, RGBA PNG, a corrupt file) and WAVs
  (16/8/24-bit, mono/stereo, 8-48 kHz, an empty one, a non-WAV one), listed by
  images.jsonl, images.csv and audio.jsonl together with deliberately bad records.
- slurp_tiny/: SLURP's layout (dataset/slurp/*.jsonl, audio/slurp_real, audio/slurp_synth)
  with FLAC recordings as released and WAV copies beside them; one listed file is missing.

Speech is espeak-ng's (needs espeak-ng); FLAC writing needs `soundfile`. Clips are cut to
0.4 s to keep the fixtures small.
"""

from __future__ import annotations

import json
import os
import shutil
import wave

import numpy as np
import tensorflow as tf

from cwcl_jax.data import audio_files, espeak

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
CLIP_SECONDS = 0.4


def speech(text: str, rate: int, seed: int) -> np.ndarray:
    """espeak-ng speaking `text` fast, cut to CLIP_SECONDS, at `rate`: float32 [T]."""
    voice = espeak.random_voice(np.random.default_rng(seed))
    waveform = espeak.synthesize(text, voice)[: int(CLIP_SECONDS * audio_files.SAMPLE_RATE)]
    return audio_files.resample(waveform, audio_files.SAMPLE_RATE, rate)


def write_wav(path: str, waveform: np.ndarray, rate: int, *, width: int = 2, channels: int = 1):
    """PCM WAV of `width` bytes per sample; extra channels are scaled copies."""
    frames = np.stack([waveform * (0.8**c) for c in range(channels)], axis=1)
    full_scale = 2 ** (8 * width - 1)  # The scale read_wav divides by.
    scaled = np.clip(np.round(frames * full_scale), -full_scale, full_scale - 1)
    if width == 1:
        data = (scaled + 128).astype(np.uint8).tobytes()
    elif width == 3:
        data = scaled.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = scaled.astype(f"<i{width}").tobytes()
    with wave.open(path, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(data)


def write_jsonl(path: str, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def make_manifest_tiny(folder: str) -> None:
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "audio"))
    _write_images(os.path.join(folder, "images"))
    _write_audio(os.path.join(folder, "audio"))
    good_images = [
        {"image": "images/red.png", "text": "a red square on black"},
        {"image": "images/blue.jpg", "text": "a blue gradient", "split": "test"},
        {"image": "images/gray.png", "text": "a gray ramp"},
        {"image": "images/rgba.png", "text": "a green square with alpha", "split": "test"},
    ]
    bad_images = [
        {"image": "images/corrupt.jpg", "text": "not an image"},
        {"image": "images/missing.png", "text": "a file that does not exist"},
        {"image": "images/red.png", "text": "   "},
        '{"image": "images/red.png", "text": ',
    ]
    write_jsonl(os.path.join(folder, "images.jsonl"), good_images + bad_images)
    with open(os.path.join(folder, "images.csv"), "w", encoding="utf-8") as f:
        f.write("image,text,split\n")
        f.write('images/red.png,"a red square, on black",train\n')
        f.write("images/blue.jpg,a blue gradient,test\n")
        f.write("images/missing.png,a file that does not exist,train\n")
    write_jsonl(
        os.path.join(folder, "audio.jsonl"),
        [
            {"audio": "audio/mono16k.wav", "text": "turn on the lights"},
            {"audio": "audio/stereo22k.wav", "text": "play some jazz", "split": "test"},
            {"audio": "audio/u8_8k.wav", "text": "what time is it"},
            {"audio": "audio/pcm24_48k.wav", "text": "set an alarm"},
            {"audio": "audio/empty.wav", "text": "silence"},
            {"audio": "audio/not_audio.wav", "text": "not a wav file"},
            {"audio": "audio/missing.wav", "text": "a file that does not exist"},
        ],
    )


def _write_images(folder: str) -> None:
    y, x = np.mgrid[0:20, 0:24]
    red = np.zeros((20, 24, 3), np.uint8)
    red[5:15, 6:18, 0] = 220
    blue = np.stack([x * 4, y * 6, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    gray = (x * 10 + y)[..., None].astype(np.uint8)
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[4:16, 4:16] = (30, 200, 60, 255)
    files = {
        "red.png": tf.io.encode_png(red),
        "blue.jpg": tf.io.encode_jpeg(blue, quality=95),
        "gray.png": tf.io.encode_png(gray),
        "rgba.png": tf.io.encode_png(rgba),
    }
    for name, encoded in files.items():
        tf.io.write_file(os.path.join(folder, name), encoded)
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")


def _write_audio(folder: str) -> None:
    write_wav(os.path.join(folder, "mono16k.wav"), speech("turn on the lights", 16000, 1), 16000)
    write_wav(
        os.path.join(folder, "stereo22k.wav"),
        speech("play some jazz", 22050, 2),
        22050,
        channels=2,
    )
    write_wav(os.path.join(folder, "u8_8k.wav"), speech("what time is it", 8000, 3), 8000, width=1)
    write_wav(
        os.path.join(folder, "pcm24_48k.wav"), speech("set an alarm", 48000, 4), 48000, width=3
    )
    write_wav(os.path.join(folder, "empty.wav"), np.zeros(0, np.float32), 16000)
    with open(os.path.join(folder, "not_audio.wav"), "wb") as f:
        f.write(b"RIFF....this is not a wave file")


SLURP_ENTRIES = {
    "train.jsonl": [
        (1, "wake me up at five am", "alarm_set", 2),
        (2, "what's the weather like in paris", "weather_query", 1),
        (3, "turn off the lights in the kitchen", "iot_hue_lightoff", 2),
        (4, "set an alarm for six", "alarm_set", 1),
    ],
    "devel.jsonl": [(5, "is it going to rain tomorrow", "weather_query", 1)],
    "test.jsonl": [
        (6, "lights off please", "iot_hue_lightoff", 1),
        (7, "cancel my alarm", "alarm_remove", 1),
    ],
    "train_synthetic.jsonl": [(8, "play some music", "play_music", 1)],
}


def make_slurp_tiny(folder: str) -> None:
    import soundfile  # Only the fixture writer needs it: SLURP ships FLAC.

    text_dir = os.path.join(folder, "dataset", "slurp")
    os.makedirs(text_dir)
    for name, entries in SLURP_ENTRIES.items():
        audio_dir = os.path.join(
            folder, "audio", "slurp_synth" if "synth" in name else "slurp_real"
        )
        os.makedirs(audio_dir, exist_ok=True)
        rows = []
        for slurp_id, sentence, intent, num_recordings in entries:
            files = [f"audio-{slurp_id:04d}{i}-headset.flac" for i in range(num_recordings)]
            for i, file in enumerate(files):
                waveform = speech(sentence, 16000, seed=10 * slurp_id + i)
                pcm = audio_files.to_int16(waveform)  # The same samples in both files.
                soundfile.write(os.path.join(audio_dir, file), pcm, 16000, subtype="PCM_16")
                write_wav(os.path.join(audio_dir, file[: -len(".flac")] + ".wav"), waveform, 16000)
            rows.append(_slurp_row(slurp_id, sentence, intent, files))
        if name == "train.jsonl":  # A recording listed but absent from the audio folder.
            rows.append(_slurp_row(9, "order a pizza", "takeaway_order", ["audio-missing.flac"]))
        write_jsonl(os.path.join(text_dir, name), rows)


def _slurp_row(slurp_id: int, sentence: str, intent: str, files: list[str]) -> dict:
    scenario, action = intent.split("_", 1)
    return {
        "slurp_id": slurp_id,
        "sentence": sentence,
        "intent": intent,
        "scenario": scenario,
        "action": action,
        "recordings": [
            {"file": file, "wer": 0.0, "ent_wer": 0.0, "status": "correct"} for file in files
        ],
    }


def main() -> None:
    for name, make in (("manifest_tiny", make_manifest_tiny), ("slurp_tiny", make_slurp_tiny)):
        folder = os.path.normpath(os.path.join(ROOT, name))
        shutil.rmtree(folder, ignore_errors=True)
        make(folder)
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
