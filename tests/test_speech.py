"""Speech tower: Hugging Face Whisper parity, a numpy reference with masks, gradients, errors."""

import dataclasses
import functools
import json
import math
import shutil
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from scipy.special import erf

from cwcl_jax import audio
from cwcl_jax.models import build_tower, load_pretrained, loading, speech

FIXTURE = Path(__file__).parent / "fixtures" / "whisper_tiny"
TINY = speech.SpeechConfig(
    n_mels=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=24, max_positions=16
)


@pytest.fixture(scope="module")
def whisper():
    return load_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE / "reference.npz"))


def _full_inputs(features: np.ndarray) -> dict:
    return {"mel": jnp.asarray(features), "mel_mask": jnp.ones(features.shape[:2], jnp.int32)}


@functools.partial(jax.jit, static_argnums=0)
def _frames_and_pooled(module, params, inputs):
    variables = {"params": params}
    frames = module.apply(variables, inputs, method=speech.SpeechEncoder.frame_features)
    return frames, module.apply(variables, inputs)


# ---- Hugging Face parity (fixture made by scripts/make_speech_fixtures.py) ----


def test_matches_hf_whisper_encoder(whisper, reference):
    inputs = _full_inputs(reference["input_features"])
    frames, pooled = _frames_and_pooled(whisper.module, whisper.params, inputs)
    chex.assert_shape(frames, (2, 1500, 32))
    np.testing.assert_allclose(
        frames[:, reference["row_index"]], reference["hidden_rows"], atol=1e-5
    )
    np.testing.assert_allclose(pooled, reference["hidden_mean"], atol=1e-5)


def test_whisper_metadata_and_sinusoids(whisper):
    assert whisper.modality == "speech"
    assert whisper.processor == audio.LogMelConfig()  # preprocessor_config.json: Whisper's
    assert whisper.module.config.position_embedding == "learned"
    assert whisper.params["position_embedding"].dtype == np.float32  # float16 file upcast
    # The checkpoint's table is HF's sinusoids (stored in float16): ours must equal it.
    np.testing.assert_allclose(
        whisper.params["position_embedding"], speech.sinusoids(1500, 32), atol=5e-4
    )


def test_loads_whisper_model_layout(tmp_path, whisper):
    """WhisperModel checkpoints name tensors "encoder.*" instead of "model.encoder.*"."""
    tensors = load_file(FIXTURE / "model.safetensors")
    renamed = {
        k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.encoder.")
    }
    save_file(renamed, tmp_path / "model.safetensors")
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    pretrained = load_pretrained(tmp_path)
    assert pretrained.processor == audio.LogMelConfig()  # default without preprocessor file
    chex.assert_trees_all_equal(pretrained.params, whisper.params)


def test_front_end_and_encoder_end_to_end(whisper, reference):
    """Our log-mel + our encoder vs HF's feature extractor (torch STFT) + HF's encoder."""
    mels = []
    for clip, length in zip(reference["waveforms_int16"], reference["lengths"], strict=True):
        out = audio.log_mel_spectrogram(clip[:length] / np.float32(32768), whisper.processor)
        mels.append(out["mel"].numpy())
        assert int(out["mel_mask"].numpy().sum()) == math.ceil(length / 160)
    # The fixture's features came from HF's torch (float32) STFT path: ~2e-5 from ours.
    np.testing.assert_allclose(np.stack(mels), reference["input_features"], atol=5e-5)
    _, pooled = _frames_and_pooled(whisper.module, whisper.params, _full_inputs(np.stack(mels)))
    np.testing.assert_allclose(pooled, reference["hidden_mean"], atol=1e-4)


def test_pretrained_on_short_masked_clip_matches_numpy_reference(whisper, reference):
    """2 s input (not Whisper's 30 s), 0.8 s of audio: positions sliced, padding masked."""
    log_mel = dataclasses.replace(whisper.processor, max_frames=200)
    clip = reference["waveforms_int16"][0] / np.float32(32768)
    features = {k: v.numpy() for k, v in audio.log_mel_spectrogram(clip, log_mel).items()}
    inputs = {k: jnp.asarray(v)[None] for k, v in features.items()}
    frames, pooled = _frames_and_pooled(whisper.module, whisper.params, inputs)
    chex.assert_shape([frames, pooled], [(1, 100, 32), (1, 32)])
    np_params = jax.tree.map(lambda x: np.asarray(x, np.float64), whisper.params)
    ref_frames, ref_pooled = _np_speech_encoder(
        np_params, np.float64(features["mel"]), features["mel_mask"], whisper.module.config
    )
    np.testing.assert_allclose(frames[0, :40], ref_frames[:40], atol=1e-4)
    np.testing.assert_allclose(pooled[0], ref_pooled, atol=1e-5)


# ---- An independent numpy forward pass ----


def _np_layer_norm(x, p, eps):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _np_conv1d(x, p, stride):
    """x [T, C_in], kernel [3, C_in, C_out], padding 1 -> [ceil(T / stride), C_out]."""
    padded = np.pad(x, [(1, 1), (0, 0)])
    starts = range(0, x.shape[0], stride)
    return (
        np.stack([np.einsum("kc,kco->o", padded[s : s + 3], p["kernel"]) for s in starts])
        + p["bias"]
    )


def _np_attention(x, p, mask, heads):
    length, width = x.shape
    dense = lambda y, name: (
        y @ p[name]["kernel"].reshape(width, width)
        + p[name].get("bias", np.zeros(width)).reshape(width)
    )
    split = lambda y: y.reshape(length, heads, -1).transpose(1, 0, 2)
    q, k, v = (split(dense(x, n)) for n in ("query", "key", "value"))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(width // heads)
    logits = np.where(mask[None, None, :] > 0, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(1, 0, 2).reshape(length, width)
    return context @ p["out"]["kernel"].reshape(width, width) + p["out"]["bias"]


def _np_speech_encoder(params, mel, mel_mask, cfg):
    """One example: mel [T, n_mels], mel_mask [T] -> (frames [T', H], pooled [H])."""
    x = _np_gelu(_np_conv1d(mel, params["conv1"], 1))
    x = _np_gelu(_np_conv1d(x, params["conv2"], 2))
    table = params.get("position_embedding", speech.sinusoids(cfg.max_positions, x.shape[1]))
    x = x + table[: x.shape[0]]
    mask = mel_mask[::2]
    for i in range(cfg.num_layers):
        layer = params["encoder"][f"layer_{i}"]
        h = _np_layer_norm(x, layer["attention_norm"], cfg.layer_norm_eps)
        x = x + _np_attention(h, layer["attention"], mask, cfg.num_heads)
        h = _np_layer_norm(x, layer["mlp_norm"], cfg.layer_norm_eps)
        x = (
            x
            + _np_gelu(h @ layer["mlp"]["fc1"]["kernel"] + layer["mlp"]["fc1"]["bias"])
            @ layer["mlp"]["fc2"]["kernel"]
            + layer["mlp"]["fc2"]["bias"]
        )
    x = _np_layer_norm(x, params["final_norm"], cfg.layer_norm_eps)
    return x, (x * mask[:, None]).sum(0) / mask.sum()


def _random_params(module, inputs, seed=0):
    """Random float32 params in the module's tree (shapes by eval_shape: no init compile),
    with non-zero biases and non-unit LN scales so that neither can hide a bug."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), inputs))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        noise = rng.standard_normal(spec.shape).astype(np.float32)
        if len(spec.shape) == 1:
            return (path[-1].key == "scale") + 0.2 * noise
        return noise / np.sqrt(math.prod(spec.shape[:-1]))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _tiny_inputs(lengths=(21, 9), frames=21, seed=0):
    mel = np.random.default_rng(seed).standard_normal((len(lengths), frames, 8)).astype(np.float32)
    mask = (np.arange(frames)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    return {"mel": jnp.asarray(mel), "mel_mask": jnp.asarray(mask)}


@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned"])
def test_matches_numpy_reference_with_mask(position_embedding):
    cfg = dataclasses.replace(TINY, position_embedding=position_embedding)
    module, inputs = speech.SpeechEncoder(cfg), _tiny_inputs()
    params = _random_params(module, inputs, seed=len(position_embedding))
    frames = module.apply({"params": params}, inputs, method=speech.SpeechEncoder.frame_features)
    pooled = module.apply({"params": params}, inputs)
    chex.assert_shape([frames, pooled], [(2, 11, 16), (2, 16)])
    chex.assert_type(pooled, jnp.float32)
    np_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    for b, valid in enumerate((11, 5)):
        ref_frames, ref_pooled = _np_speech_encoder(
            np_params,
            np.asarray(inputs["mel"][b], np.float64),
            np.asarray(inputs["mel_mask"][b]),
            cfg,
        )
        np.testing.assert_allclose(frames[b, :valid], ref_frames[:valid], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(pooled[b], ref_pooled, atol=1e-5, rtol=1e-5)


# ---- Masks, gradients, numerics switches ----


@pytest.fixture(scope="module")
def tiny_model():
    module, inputs = speech.SpeechEncoder(TINY), _tiny_inputs()
    return module, _random_params(module, inputs)


@jax.jit
def _tiny_pooled_and_mel_grad(params, inputs):
    apply = lambda mel: speech.SpeechEncoder(TINY).apply({"params": params}, {**inputs, "mel": mel})
    return apply(inputs["mel"]), jax.grad(lambda mel: apply(mel).sum())(inputs["mel"])


@settings(max_examples=8, deadline=None)
@given(valid=st.integers(1, 18), seed=st.integers(0, 1000))
def test_frames_beyond_the_receptive_field_of_valid_frames_do_not_matter(tiny_model, valid, seed):
    """Valid encoder frames see mel frames up to valid + 1 (two k=3 convs); later padding
    frames are masked out of attention and pooling, so their content and gradient vanish."""
    _, params = tiny_model
    inputs = _tiny_inputs(lengths=(valid,), seed=seed)
    garbage = jnp.where(jnp.arange(21)[None, :, None] >= valid + 2, 100.0, inputs["mel"])
    pooled, grad = _tiny_pooled_and_mel_grad(params, inputs)
    pooled_garbage, _ = _tiny_pooled_and_mel_grad(params, {**inputs, "mel": garbage})
    np.testing.assert_allclose(pooled_garbage, pooled, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(grad)[0, valid + 2 :] == 0.0)
    assert np.abs(np.asarray(grad)[0, :valid]).sum() > 0


def _unit_direction(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal(np.shape(x)) for x in leaves]
    norm = np.sqrt(sum(np.sum(n**2) for n in noise))
    return jax.tree.unflatten(treedef, [n / norm for n in noise])


def _tree_dot(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return float(sum(np.sum(np.asarray(x, np.float64) * y) for x, y in pairs))


def test_gradients_match_numpy_finite_differences(tiny_model):
    """<grad, v> from JAX (float32) vs a central difference of the float64 numpy reference."""
    module, params = tiny_model
    inputs = _tiny_inputs()
    weights = np.random.default_rng(0).standard_normal((2, TINY.hidden_size))
    mask = np.asarray(inputs["mel_mask"])

    def jax_loss(p, mel):
        return jnp.sum(module.apply({"params": p}, {**inputs, "mel": mel}) * weights)

    def np_loss(p, mel):
        pooled = [_np_speech_encoder(p, mel[b], mask[b], TINY)[1] for b in range(2)]
        return float(np.sum(np.stack(pooled) * weights))

    grads = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))(params, inputs["mel"])
    np_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    np_mel = np.asarray(inputs["mel"], np.float64)
    param_dir, mel_dir = _unit_direction(np_params, seed=1), _unit_direction(np_mel, seed=2)
    eps = 1e-5
    step = lambda sign: jax.tree.map(lambda x, v: x + sign * eps * v, np_params, param_dir)
    numeric_params = (np_loss(step(1), np_mel) - np_loss(step(-1), np_mel)) / (2 * eps)
    numeric_mel = (
        np_loss(np_params, np_mel + eps * mel_dir) - np_loss(np_params, np_mel - eps * mel_dir)
    ) / (2 * eps)
    np.testing.assert_allclose(_tree_dot(grads[0], param_dir), numeric_params, rtol=1e-3)
    np.testing.assert_allclose(_tree_dot(grads[1], mel_dir), numeric_mel, rtol=1e-3)
    unused = [
        jax.tree_util.keystr(k) for k, g in jax.tree.leaves_with_path(grads[0]) if not g.any()
    ]
    assert not unused  # every parameter reaches the output


def test_bfloat16_compute_and_remat(tiny_model):
    module, params = tiny_model
    inputs = _tiny_inputs()
    apply = lambda m: jax.jit(m.apply)({"params": params}, inputs)
    grad = lambda m: jax.jit(jax.grad(lambda p: m.apply({"params": p}, inputs).sum()))(params)
    reference = apply(module)
    bf16 = speech.SpeechEncoder(dataclasses.replace(TINY, dtype=jnp.bfloat16))
    bf16_params = nn.unbox(jax.eval_shape(bf16.init, jax.random.key(0), inputs))["params"]
    assert bf16_params["conv1"]["kernel"].dtype == jnp.float32  # params stay float32
    np.testing.assert_allclose(apply(bf16), reference, atol=0.1)
    remat = speech.SpeechEncoder(dataclasses.replace(TINY, remat=True))
    chex.assert_trees_all_close(grad(remat), grad(module), atol=1e-5)


def test_dropout_only_in_training():
    module = speech.SpeechEncoder(dataclasses.replace(TINY, dropout_rate=0.3))
    inputs = _tiny_inputs()
    params = _random_params(module, inputs)
    apply = jax.jit(module.apply, static_argnames="train")
    evaluate = apply({"params": params}, inputs)
    train = lambda seed: apply(
        {"params": params}, inputs, train=True, rngs={"dropout": jax.random.key(seed)}
    )
    assert not np.allclose(train(0), evaluate)
    assert not np.allclose(train(0), train(1))


def test_every_param_has_logical_axis_names():
    module = speech.SpeechEncoder(dataclasses.replace(TINY, position_embedding="learned"))
    boxed = jax.jit(module.init)(jax.random.key(0), _tiny_inputs())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
    assert boxed["conv1"]["kernel"].names == (None, "conv_in", "conv_out")
    assert boxed["position_embedding"].names == ("positions", "embed")
    # The learned table starts as Whisper's sinusoids.
    np.testing.assert_allclose(boxed["position_embedding"].value, speech.sinusoids(16, 16))


@pytest.mark.parametrize("arch, hidden", [("tiny", 128), ("small", 256)])
def test_build_speech_tower(arch, hidden):
    module = build_tower("speech", arch, num_layers=1)
    inputs = {"mel": jnp.zeros((2, 200, 80)), "mel_mask": jnp.ones((2, 200), jnp.int32)}
    shapes = jax.eval_shape(lambda: module.apply(module.init(jax.random.key(0), inputs), inputs))
    chex.assert_shape(shapes, (2, hidden))
    assert build_tower("speech", arch, dtype=jnp.bfloat16).config.dtype == jnp.bfloat16


# ---- Errors ----


@pytest.mark.parametrize(
    "inputs, match",
    [
        ({"mel": jnp.zeros((1, 4, 8))}, r"speech inputs lack \['mel_mask'\]"),
        (
            {"mel": jnp.zeros((1, 4, 7)), "mel_mask": jnp.ones((1, 4))},
            r"expected \[batch, frames, 8\]",
        ),
        (
            {"mel": jnp.zeros((1, 4, 8)), "mel_mask": jnp.ones((1, 5))},
            r"mel_mask has shape \(1, 5\)",
        ),
        ({"mel": jnp.zeros((1, 33, 8)), "mel_mask": jnp.ones((1, 33))}, "33 mel frames exceed"),
    ],
)
def test_bad_inputs_errors(inputs, match):
    module = speech.SpeechEncoder(TINY)
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), inputs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: speech.SpeechConfig(position_embedding="rope"), "supported: \\('sinusoidal'"),
        (lambda: speech.SpeechConfig(hidden_size=15, num_heads=1), "must be even"),
        (lambda: speech.SpeechConfig(hidden_size=128, num_heads=3), "not divisible by num_heads"),
        (lambda: build_tower("speech", "huge"), r"speech/huge; known: .*speech/small"),
        (
            lambda: build_tower("speech", "tiny", hiden_size=3),
            r"unknown config field\(s\) \['hiden_size'\]",
        ),
    ],
)
def test_bad_config_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _fixture_copy(tmp_path: Path, drop: str = "", config_edit=None, preprocessor_edit=None):
    tensors = load_file(FIXTURE / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != drop}, tmp_path / "model.safetensors")
    for name, edit in (
        ("config.json", config_edit),
        ("preprocessor_config.json", preprocessor_edit),
    ):
        content = json.loads((FIXTURE / name).read_text())
        (tmp_path / name).write_text(json.dumps({**content, **(edit or {})}))
    return tmp_path


def test_checkpoint_missing_key_is_named(tmp_path):
    path = _fixture_copy(tmp_path, drop="model.encoder.conv2.bias")
    with pytest.raises(
        loading.CheckpointMismatchError, match=r"missing keys:\n  model\.encoder\.conv2\.bias"
    ):
        load_pretrained(path)


def test_checkpoint_shape_mismatch_is_named(tmp_path):
    path = _fixture_copy(tmp_path, config_edit={"max_source_positions": 1000})
    with pytest.raises(
        loading.CheckpointMismatchError, match=r"embed_positions\.weight: checkpoint \(1500, 32\)"
    ):
        load_pretrained(path)


def test_preprocessor_must_agree_with_config(tmp_path):
    path = _fixture_copy(tmp_path, preprocessor_edit={"feature_size": 128})
    with pytest.raises(ValueError, match="feature_size=128 but config.json num_mel_bins=80"):
        load_pretrained(path)


def test_whisper_config_missing_field_is_named(tmp_path):
    path = _fixture_copy(tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["d_model"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="required field 'd_model' is missing"):
        load_pretrained(path)
