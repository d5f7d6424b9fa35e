"""Everything a run builds from its config: mesh, towers, step, shardings, initial state.

`build_experiment(config, with_weights=False)` touches no checkpoint weights and no data:
it is what `--mode=compile_check` uses to compile the paper-scale step on simulated
devices. Training calls it with weights, then `init_state`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from cwcl_jax import frozen_cache, losses, sharding, train, train_step
from cwcl_jax.audio import LogMelConfig
from cwcl_jax.config_utils import tower_overrides
from cwcl_jax.models import TwoTower, build_tower, load_pretrained, loading

MODALITIES = ("image", "text", "speech")
# Step counter and PRNG key stay whole on every device.
_STATE_RULES = ((r"^(step|rng)$", "replicate"),)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The static parts of a run; arrays live elsewhere (state, frozen params, batches)."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    parts: train_step.StepParts
    batch_spec: dict  # {modality: {name: ShapeDtypeStruct [B, ...]}}, global, sharded
    state_shardings: Any
    frozen_shardings: Any
    frozen_processor: Any  # tokenizer / image or audio settings of the frozen tower, or None

    @property
    def batch_shardings(self) -> dict:
        return jax.tree.map(lambda s: s.sharding, self.batch_spec)


def modality_of(config: ml_collections.ConfigDict, side: str) -> str:
    modality = config.model[side].modality
    if modality not in MODALITIES:
        raise ValueError(f"config.model.{side}.modality={modality!r}; use one of {MODALITIES}")
    if not config.data.features[modality]:
        raise ValueError(
            f"config.model.{side}.modality={modality!r} but config.data.features.{modality} is "
            "None: the dataset must provide that modality"
        )
    return modality


def _modality_spec(modality: str, data: ml_collections.ConfigDict, batch: int) -> dict:
    if modality == "image":
        size = data.image_size
        return {"pixels": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)}
    if modality == "text":
        shape = (batch, data.max_text_length)
        return {n: jax.ShapeDtypeStruct(shape, jnp.int32) for n in ("input_ids", "attention_mask")}
    frames = round(data.audio_max_seconds * data.sample_rate / LogMelConfig.hop_length)
    return {
        "mel": jax.ShapeDtypeStruct((batch, frames, data.n_mels), jnp.float32),
        "mel_mask": jax.ShapeDtypeStruct((batch, frames), jnp.int32),
    }


def batch_spec(config: ml_collections.ConfigDict, mesh: Mesh | None, batch: int) -> dict:
    """Shapes of the two towers' inputs for a batch of `batch`, as the data pipeline makes
    them; sharded over the batch axes when a mesh is given."""
    spec = {}
    for side in ("trainable", "frozen"):
        modality = modality_of(config, side)
        spec[modality] = _modality_spec(modality, config.data, batch)
    return _sharded(spec, mesh)


def _sharded(spec: dict, mesh: Mesh | None) -> dict:
    if mesh is None:
        return spec
    shard = sharding.batch_sharding(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shard), spec)


def with_cached_frozen(spec: dict, frozen_key: str, frozen_dim: int, mesh: Mesh | None) -> dict:
    """The batch spec when the frozen cache serves `frozen_raw` [B, D'] for the frozen inputs."""
    batch = jax.tree.leaves(spec[frozen_key])[0].shape[0]
    cached = {train_step.FROZEN_RAW: jax.ShapeDtypeStruct((batch, frozen_dim), jnp.float32)}
    rest = {k: v for k, v in spec.items() if k != frozen_key}
    return {**rest, **_sharded(cached, mesh)}


def _module_without_weights(tower: ml_collections.ConfigDict, field: str):
    """The tower module from `arch` or, failing that, the checkpoint's config.json."""
    overrides = tower_overrides(tower.overrides)
    if tower.arch:
        return build_tower(tower.modality, tower.arch, **overrides)
    config_path = Path(tower.path) / "config.json"
    if not tower.path or not config_path.is_file():
        raise ValueError(f"{field}: set arch, or path to a directory with config.json")
    hf_config = loading.read_json(config_path)
    converter = loading.converter_for(hf_config, config_path)
    return converter.build_module(Path(tower.path), hf_config, **overrides)


def _pretrained(tower: ml_collections.ConfigDict, field: str):
    pretrained = load_pretrained(tower.path, **tower_overrides(tower.overrides))
    if pretrained.modality != tower.modality:
        raise ValueError(
            f"{field}.path={tower.path} is a {pretrained.modality} tower, but "
            f"{field}.modality={tower.modality!r}"
        )
    return pretrained


def build_towers(config: ml_collections.ConfigDict, with_weights: bool):
    """(frozen module, frozen params or None, processor, trainable module, its init or None)."""
    frozen, trainable = config.model.frozen, config.model.trainable
    frozen_params = processor = trainable_init = None
    if with_weights:
        if not frozen.path:
            raise ValueError("config.model.frozen.path: training needs the frozen tower's weights")
        loaded = _pretrained(frozen, "config.model.frozen")
        frozen_module, frozen_params, processor = loaded.module, loaded.params, loaded.processor
    else:
        frozen_module = _module_without_weights(frozen, "config.model.frozen")
    if with_weights and trainable.path:
        loaded = _pretrained(trainable, "config.model.trainable")
        trainable_module, trainable_init = loaded.module, loaded.params
    else:
        trainable_module = _module_without_weights(trainable, "config.model.trainable")
    return frozen_module, frozen_params, processor, trainable_module, trainable_init


def _example(spec: dict) -> dict:
    """One-example zero inputs with the spec's per-example shapes (for init tracing)."""
    return jax.tree.map(lambda s: jnp.zeros((1, *s.shape[1:]), s.dtype), spec)


def make_loss_fn(config: ml_collections.ConfigDict, mesh: Mesh) -> train_step.LossFn:
    """The sharded loss when the batch is split over devices, the plain one otherwise."""
    loss_config = losses.LossConfig(**config.loss)
    if sharding.num_batch_shards(mesh) > 1:
        return losses.make_sharded_two_tower_loss(mesh, loss_config, sharding.BATCH_AXES)
    return lambda *args, **kwargs: losses.two_tower_loss(*args, **kwargs, config=loss_config)


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Config errors that would otherwise surface inside tracing or compilation."""
    for field in ("total_steps", "log_every_steps", "checkpoint_every_steps"):
        if config[field] < 1:
            raise ValueError(f"config.{field} must be >= 1, got {config[field]}")
    train_step.check_batch_layout(config.batch_size, config.accum_steps, mesh)
    sharding.validate_rules(config.sharding.trainable, "config.sharding.trainable")
    sharding.validate_rules(config.sharding.frozen, "config.sharding.frozen")
    if modality_of(config, "trainable") == modality_of(config, "frozen"):
        raise ValueError("config.model: the trainable and frozen towers have the same modality")
    frozen_cache.check_config(config)


def build_experiment(config: ml_collections.ConfigDict, *, with_weights: bool):
    """-> (Experiment, frozen params (sharded arrays, or abstract), trainable init or None)."""
    mesh = sharding.create_mesh(config.mesh)
    validate(config, mesh)
    frozen_module, frozen_params, processor, tower, trainable_init = build_towers(
        config, with_weights
    )
    spec = batch_spec(config, mesh, config.batch_size)
    trainable_key, frozen_key = modality_of(config, "trainable"), modality_of(config, "frozen")
    example_frozen = _example(spec[frozen_key])
    frozen_boxed = jax.eval_shape(lambda: frozen_module.init(jax.random.key(0), example_frozen))
    frozen_shardings = sharding.tree_shardings(frozen_boxed["params"], mesh, config.sharding.frozen)
    frozen_shapes = nn.unbox(frozen_boxed)
    frozen_dim = jax.eval_shape(
        lambda variables: frozen_module.apply(variables, example_frozen), frozen_shapes
    ).shape[-1]
    if config.frozen_cache.enabled:
        spec = with_cached_frozen(spec, frozen_key, frozen_dim, mesh)
    model = TwoTower(
        trainable_tower=tower,
        frozen_dim=frozen_dim,
        embed_dim=config.model.embed_dim,
        frozen_head=config.model.frozen_head,
        use_bias=config.loss.name == "siglip",
        init_inverse_temperature=config.model.init_inverse_temperature,
        init_bias=config.model.init_bias,
    )
    schedule = train.learning_rate_schedule(config.optimizer, config.total_steps)
    parts = train_step.StepParts(
        model=model,
        frozen_module=frozen_module,
        loss_fn=make_loss_fn(config, mesh),
        optimizer=train.make_optimizer(config.optimizer, config.total_steps),
        learning_rate=schedule,
        trainable_key=trainable_key,
        frozen_key=frozen_key,
        accum_steps=config.accum_steps,
        mesh=mesh,
    )
    state_shardings = sharding.tree_shardings(
        jax.eval_shape(lambda: _new_state(parts, spec, config.seed, frozen_dim)),
        mesh,
        (*_STATE_RULES, *config.sharding.trainable),
    )
    experiment = Experiment(config, mesh, parts, spec, state_shardings, frozen_shardings, processor)
    if frozen_params is None:
        frozen_params = sharding.abstract_with_shardings(frozen_shapes["params"], frozen_shardings)
    else:
        frozen_params = sharding.put_global(frozen_params, frozen_shardings)
    return experiment, frozen_params, trainable_init


def _new_state(parts: train_step.StepParts, spec: dict, seed: int, frozen_dim: int):
    """A fresh (boxed) train state; traced under eval_shape or jit, never run eagerly."""
    example = _example(spec[parts.trainable_key])
    frozen_raw = jnp.zeros((1, frozen_dim), jnp.float32)
    init = lambda key: parts.model.init(key, example, frozen_raw)["params"]
    return train.create_train_state(init, parts.optimizer, seed)


def _fresh_state(experiment: Experiment) -> Callable[[], train.TrainState]:
    parts, config = experiment.parts, experiment.config
    frozen_dim = parts.model.frozen_dim
    return lambda: nn.unbox(_new_state(parts, experiment.batch_spec, config.seed, frozen_dim))


def init_state(experiment: Experiment, trainable_init: Any = None) -> train.TrainState:
    """A fresh train state, born in its shardings; pretrained trainable-tower weights
    (`trainable_init`) replace the random ones."""
    state = jax.jit(_fresh_state(experiment), out_shardings=experiment.state_shardings)()
    if trainable_init is None:
        return state
    if jax.tree.structure(state.params["trainable_tower"]) != jax.tree.structure(trainable_init):
        raise ValueError(
            f"config.model.trainable.path={experiment.config.model.trainable.path}: its params "
            "do not have the tree of the trainable tower built from the config"
        )
    shardings = experiment.state_shardings.params["trainable_tower"]
    placed = sharding.put_global(trainable_init, shardings)
    return state.replace(params={**state.params, "trainable_tower": placed})


def abstract_state(experiment: Experiment) -> Any:
    """ShapeDtypeStructs of the state with their shardings (restore target, compile input)."""
    shapes = jax.eval_shape(_fresh_state(experiment))
    return sharding.abstract_with_shardings(shapes, experiment.state_shardings)


def check_batch(batch: dict, spec: dict) -> None:
    """ValueError naming the field when a data batch does not match the compiled shapes."""
    for modality, fields in spec.items():
        if modality not in batch:
            raise ValueError(f"data batch has no {modality!r} entry; it has {sorted(batch)}")
        entries = batch[modality]
        if isinstance(fields, jax.ShapeDtypeStruct):  # a top-level array (frozen_raw)
            fields, entries = {modality: fields}, {modality: entries}
        for name, s in fields.items():
            got = entries.get(name)
            if got is None or tuple(got.shape) != s.shape or got.dtype != s.dtype:
                shape = None if got is None else (tuple(got.shape), str(got.dtype))
                raise ValueError(
                    f"data batch {modality}/{name} is {shape}, expected ({s.shape}, {s.dtype}); "
                    "check config.data against the towers"
                )
