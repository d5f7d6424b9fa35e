"""A trained TwoTower plus its frozen tower -> the two functions the evaluator calls.

    embed_batch, embed_texts = two_tower_embedders(
        model, variables, frozen_module, frozen_params,
        trainable_modality="image", frozen_modality="text",
        tokenize=hf_tokenize(tokenizer, config.data.max_text_length))

Either tower may be the text one: prompts go through the frozen tower and the frozen-side
head when text is frozen, through the trainable tower and head when it is trainable.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cwcl_jax.eval import gather
from cwcl_jax.models import TwoTower, frozen_features

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]
_STATIC = ("model", "frozen_module", "trainable_modality", "frozen_modality")


@functools.partial(jax.jit, static_argnames=_STATIC)
def embed_two_tower_batch(
    variables: Any,
    frozen_params: Any,
    batch: dict[str, Any],
    *,
    model: TwoTower,
    frozen_module: nn.Module,
    trainable_modality: str,
    frozen_modality: str,
) -> dict[str, jax.Array]:
    """{trainable_modality: [B, D], frozen_modality: [B, D]} L2-normalized embeddings.

    Jitted with the modules static, so every eval reuses one compiled program per shape.
    """
    raw = frozen_features(frozen_module, frozen_params, batch[frozen_modality])
    trainable = model.apply(
        variables, batch[trainable_modality], train=False, method=TwoTower.embed_trainable
    )
    return {
        trainable_modality: trainable,
        frozen_modality: model.apply(variables, raw, method=TwoTower.embed_frozen),
    }


@functools.partial(jax.jit, static_argnames=("model", "frozen_module"))
def _embed_text_inputs(variables, frozen_params, inputs, *, model, frozen_module) -> jax.Array:
    if frozen_module is None:
        return model.apply(variables, inputs, train=False, method=TwoTower.embed_trainable)
    raw = frozen_features(frozen_module, frozen_params, inputs)
    return model.apply(variables, raw, method=TwoTower.embed_frozen)


def hf_tokenize(tokenizer: Any, max_length: int) -> Tokenize:
    """Prompt tokenization as the data pipeline tokenizes captions: a Hugging Face
    tokenizer, padded and truncated to `max_length` (data.max_text_length)."""

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        tokens = tokenizer(
            texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="np"
        )
        return {k: np.asarray(tokens[k], np.int32) for k in ("input_ids", "attention_mask")}

    return tokenize


def two_tower_embedders(
    model: TwoTower,
    variables: Any,
    frozen_module: nn.Module,
    frozen_params: Any,
    *,
    trainable_modality: str,
    frozen_modality: str,
    tokenize: Tokenize | None = None,
) -> tuple[Callable[[dict], dict[str, jax.Array]], Callable[[list[str]], np.ndarray] | None]:
    """(embed_batch, embed_texts) for `cwcl_jax.evaluate.Evaluator`.

    variables: the TwoTower's {"params": ...}; frozen_params: the frozen tower's params.
    tokenize: texts -> {"input_ids", "attention_mask"} int [n, L] with the text tower's
    tokenizer and max length (as in training); needed when one tower is text. embed_texts
    is None when neither tower is text (no zero-shot tasks then).
    """
    if trainable_modality == frozen_modality:
        raise ValueError(f"both towers are {trainable_modality!r}; they must differ")
    embed_batch = functools.partial(
        embed_two_tower_batch,
        variables,
        frozen_params,
        model=model,
        frozen_module=frozen_module,
        trainable_modality=trainable_modality,
        frozen_modality=frozen_modality,
    )
    if "text" not in (trainable_modality, frozen_modality):
        return embed_batch, None
    if tokenize is None:
        raise ValueError("tokenize is required when one tower is the text tower")
    text_frozen = frozen_module if frozen_modality == "text" else None
    embed = functools.partial(
        _embed_text_inputs, variables, frozen_params, model=model, frozen_module=text_frozen
    )

    def embed_texts(texts: list[str]) -> np.ndarray:
        inputs = {k: np.asarray(v) for k, v in tokenize(list(texts)).items()}
        rows = 1 << max(len(texts) - 1, 0).bit_length()  # few compiled shapes: powers of two
        padded = {k: _pad_rows(v, rows) for k, v in inputs.items()}
        return gather.to_host(embed(padded))[: len(texts)]

    return embed_batch, embed_texts


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return np.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
