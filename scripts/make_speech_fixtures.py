"""Writes tests/fixtures/whisper_tiny: a tiny random Whisper checkpoint and reference outputs.

Needs PyTorch and transformers (fixture generation only; the tests do not):
    .venv-fixtures/bin/python scripts/make_speech_fixtures.py

Files:
  config.json, preprocessor_config.json, model.safetensors: WhisperForConditionalGeneration
    with a 2-layer, d_model 32 encoder, a 1-layer decoder and a 64-token vocabulary. Weights
    are stored in float16 to keep the 1500 x 32 position table small; the reference below is
    computed from the float16 values upcast to float32, as our loader does.
  reference.npz (compressed):
    waveforms_int16 [2, S], lengths [2]: two synthetic clips (0.8 s, 0.5 s) at 16 kHz.
    input_features [2, 3000, 80]: WhisperFeatureExtractor output (padded to 30 s).
    row_index [R]: encoder frames kept; hidden_rows [2, R, 32]: last_hidden_state at them
      (every row depends on the whole input through attention, so a sample of rows checks
      the full computation); hidden_mean [2, 32]: last_hidden_state averaged over all 1500.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

SAMPLE_RATE = 16_000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "whisper_tiny"


def tiny_config() -> WhisperConfig:
    return WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )


@torch.no_grad()
def randomize(model: WhisperForConditionalGeneration, seed: int = 0) -> None:
    """Fan-in scaled weights and visible biases/LN params, so that a transposed or misplaced
    tensor changes the output clearly (HF's std 0.02 init gives near-uniform attention)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "embed_positions" in name:
            continue  # keep Whisper's sinusoids, as real checkpoints have them
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith("layer_norm.weight"):
            param.copy_(1.0 + 0.1 * noise)
        elif param.ndim == 1:
            param.copy_(0.1 * noise)
        else:
            fan_in = math.prod(param.shape[1:])
            param.copy_(noise / math.sqrt(fan_in))


def synthetic_clips(seed: int = 0) -> list[np.ndarray]:
    """A voiced-like harmonic sweep (0.8 s) and an enveloped noise burst (0.5 s), int16."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 3.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.hanning(t.size)
    burst = rng.standard_normal(int(0.5 * SAMPLE_RATE)) * np.hanning(int(0.5 * SAMPLE_RATE))
    return [np.round(x / np.abs(x).max() * 0.6 * 32767).astype(np.int16) for x in (voiced, burst)]


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config()).eval()
    randomize(model)
    model.half().save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)  # decoding is not our concern
    extractor = WhisperFeatureExtractor(feature_size=80)
    extractor.save_pretrained(out_dir)

    model = WhisperForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32).eval()
    clips = synthetic_clips()
    waveforms = [clip.astype(np.float32) / 32768.0 for clip in clips]
    features = extractor(waveforms, sampling_rate=SAMPLE_RATE, return_tensors="np")
    input_features = features["input_features"].astype(np.float32)  # [2, 80, 3000]
    with torch.no_grad():
        hidden = model.model.encoder(torch.from_numpy(input_features)).last_hidden_state.numpy()
    row_index = np.array(sorted({*range(48), *range(48, 1500, 29), 1499}), np.int32)
    padded = np.zeros((len(clips), max(c.size for c in clips)), np.int16)
    for i, clip in enumerate(clips):
        padded[i, : clip.size] = clip
    np.savez_compressed(
        out_dir / "reference.npz",
        waveforms_int16=padded,
        lengths=np.array([c.size for c in clips], np.int32),
        input_features=input_features.transpose(0, 2, 1),
        row_index=row_index,
        hidden_rows=hidden[:, row_index],
        hidden_mean=hidden.mean(axis=1),
    )
    for path in sorted(out_dir.iterdir()):
        print(f"{path.relative_to(out_dir.parent)}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    main(parser.parse_args().out)
