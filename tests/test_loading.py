"""Checkpoint loading: the params tree, prefixes, shards, dtypes, and every error path."""

import json
import shutil
from pathlib import Path

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cwcl_jax.models import (
    CheckpointMismatchError,
    Converter,
    Pretrained,
    load_pretrained,
    supported_model_types,
)
from cwcl_jax.models.loading import conv1d, conv2d, convert_params, linear

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A writable copy of the tiny BERT checkpoint."""
    return Path(shutil.copytree(FIXTURES / "tiny_bert", tmp_path / "tiny_bert"))


def rewrite_tensors(checkpoint: Path, edit) -> None:
    tensors = load_file(checkpoint / "model.safetensors")
    save_file(edit(dict(tensors)), checkpoint / "model.safetensors")


def test_params_are_unboxed_in_the_init_tree():
    pretrained = load_pretrained(FIXTURES / "tiny_bert")
    assert isinstance(pretrained, Pretrained)
    inputs = {"input_ids": np.ones((1, 4), np.int32), "attention_mask": np.ones((1, 4), np.int32)}
    expected = nn.unbox(jax.eval_shape(pretrained.module.init, jax.random.key(0), inputs))
    chex.assert_trees_all_equal_shapes_and_dtypes(pretrained.params, expected["params"])
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(pretrained.params))
    assert pretrained.source == str(FIXTURES / "tiny_bert")
    assert pretrained.config["model_type"] == "bert"


def test_attention_kernels_are_transposed_and_split_by_head():
    pretrained = load_pretrained(FIXTURES / "tiny_bert")
    tensors = load_file(FIXTURES / "tiny_bert" / "model.safetensors")
    query = pretrained.params["encoder"]["layer_1"]["attention"]["query"]["kernel"]
    torch_weight = tensors["encoder.layer.1.attention.self.query.weight"]  # [out, in]
    np.testing.assert_array_equal(query[:, 2, :], torch_weight[16:24].T)  # head 2 of 4 x 8


def test_layout_transforms_match_pytorch_conventions():
    weight = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # [out, in, h, w]
    assert conv2d(weight)[1, 2, 0, 1] == weight[1, 0, 1, 2]
    assert conv1d(weight[..., 0])[3, 2, 1] == weight[1, 2, 3, 0]
    assert linear(weight[:, :, 0, 0])[2, 1] == weight[1, 2, 0, 0]


def test_prefixed_checkpoint_with_task_head_loads(checkpoint):
    """A BertForMaskedLM-style file: names under "bert.", plus an ignored "cls." head."""
    plain = load_pretrained(checkpoint).params

    def add_prefix(tensors):
        renamed = {f"bert.{k}": v for k, v in tensors.items()}
        return renamed | {"cls.predictions.bias": np.zeros(3, np.float32)}

    rewrite_tensors(checkpoint, add_prefix)
    chex.assert_trees_all_equal(load_pretrained(checkpoint).params, plain)


def test_sharded_checkpoint_loads_like_a_single_file(checkpoint):
    plain = load_pretrained(checkpoint).params
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, checkpoint / shard)
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (checkpoint / "model.safetensors").unlink()
    chex.assert_trees_all_equal(load_pretrained(checkpoint).params, plain)


def test_bfloat16_checkpoint_is_cast_to_param_dtype(checkpoint):
    import ml_dtypes

    rewrite_tensors(checkpoint, lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
    params = load_pretrained(checkpoint).params
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}


def test_mismatches_are_all_reported_by_name_in_one_error(checkpoint):
    def corrupt(tensors):
        del tensors["encoder.layer.0.attention.self.key.bias"]
        tensors["encoder.layer.0.attention.self.extra.weight"] = np.zeros(2, np.float32)
        tensors["embeddings.LayerNorm.weight"] = np.ones(31, np.float32)
        fc1 = "encoder.layer.1.intermediate.dense.weight"
        tensors[fc1] = tensors[fc1].T  # same size, transposed: must not be reshaped away
        return tensors

    rewrite_tensors(checkpoint, corrupt)
    with pytest.raises(CheckpointMismatchError) as error:
        load_pretrained(checkpoint)
    message = str(error.value)
    assert "1 missing keys:\n  encoder.layer.0.attention.self.key.bias" in message
    assert "1 unexpected keys:\n  encoder.layer.0.attention.self.extra.weight" in message
    assert "embeddings.LayerNorm.weight: checkpoint (31,), model expects (32,)" in message
    assert (
        "encoder.layer.1.intermediate.dense.weight: checkpoint (32, 64) ((64, 32) in Flax "
        "layout), model expects (32, 64) for encoder/layer_1/mlp/fc1/kernel" in message
    )


def test_pooler_weights_are_required_only_for_pooler_pooling(checkpoint):
    rewrite_tensors(checkpoint, lambda t: {k: v for k, v in t.items() if "pooler" not in k})
    assert "pooler" not in load_pretrained(checkpoint).params
    with pytest.raises(CheckpointMismatchError, match="2 missing keys:\n  pooler.dense"):
        load_pretrained(checkpoint, pooling="pooler")


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist.*allow_download=True"):
        load_pretrained(missing)


def test_file_instead_of_directory_is_named(checkpoint):
    with pytest.raises(NotADirectoryError, match="config.json is a file, not a directory"):
        load_pretrained(checkpoint / "config.json")


def test_missing_config_is_named(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{checkpoint} has no config.json"):
        load_pretrained(checkpoint)


def test_invalid_json_is_named(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_pretrained(checkpoint)


def test_missing_config_field_is_named(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    del config["num_hidden_layers"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: required field 'num_hidden_layers'"):
        load_pretrained(checkpoint)


def test_unsupported_model_type_lists_the_supported_ones(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text()) | {"model_type": "gpt2"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    supported = ", ".join(supported_model_types())
    assert {"bert", "roberta", "vit", "clip_vision_model"} <= set(supported_model_types())
    with pytest.raises(ValueError, match=f"unsupported model_type 'gpt2'; supported: {supported}"):
        load_pretrained(checkpoint)


def test_pytorch_bin_checkpoint_explains_conversion(checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds only pytorch_model.bin") as error:
        load_pretrained(checkpoint)
    assert "save_pretrained(" in str(error.value) and "safe_serialization=True" in str(error.value)


def test_checkpoint_without_weights_is_named(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_pretrained(checkpoint)


def test_unknown_override_lists_valid_fields():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['depth'\]; valid fields"):
        load_pretrained(FIXTURES / "tiny_bert", depth=3)


def test_unsupported_position_embedding_is_named(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key' is not supported"):
        load_pretrained(checkpoint)


def test_missing_tokenizer_is_named(checkpoint):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{checkpoint} has no tokenizer files"):
        load_pretrained(checkpoint)


def test_tokenizer_larger_than_the_embedding_table_is_an_error(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(config | {"vocab_size": 10}))
    name = "embeddings.word_embeddings.weight"
    rewrite_tensors(checkpoint, lambda t: t | {name: t[name][:10]})
    with pytest.raises(ValueError, match="more than config.json vocab_size=10"):
        load_pretrained(checkpoint)


def test_converter_without_a_rule_is_a_bug_report():
    converter = Converter(
        "text", build_module=None, example_inputs=None, rules=(), load_processor=None
    )
    expected = {"novel": {"kernel": jax.ShapeDtypeStruct((2, 2), np.float32)}}
    with pytest.raises(NotImplementedError, match="no rule for Flax parameter 'novel/kernel'"):
        convert_params({}, expected, converter, "test")
