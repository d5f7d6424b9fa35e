"""cwcl_jax.losses against a plain float64 numpy reference, properties and error paths."""

import dataclasses
import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwcl_jax import losses
from cwcl_jax.losses import LossConfig, cwcl_loss, siglip_loss, similarity_weights, two_tower_loss

KINDS = ("paper", "exp", "identity", "shuffled")


# ------------------------------------------------------------------ numpy reference (float64)
def ref_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_weights(frozen, kind, exp_temperature=0.1, seed=0):
    """W: paper cos/2 + 1/2; exp exp((cos - 1)/t); identity I; shuffled = paper on
    frozen rows permuted by jax.random.permutation(key(seed), N) (the documented rule)."""
    r = ref_normalize(frozen)
    n = r.shape[0]
    if kind == "identity":
        return np.eye(n)
    if kind == "shuffled":
        r = r[np.asarray(jax.random.permutation(jax.random.key(seed), n))]
    cos = np.clip(r @ r.T, -1, 1)
    w = np.exp((cos - 1) / exp_temperature) if kind == "exp" else cos / 2 + 0.5
    np.fill_diagonal(w, 1.0)
    return w


def ref_log_softmax(s):
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


def ref_cwcl(anchors, candidates, w, tau):
    """One direction -> (loss, dL/d anchors, dL/d candidates, dL/d tau)."""
    a, c = np.asarray(anchors, np.float64), np.asarray(candidates, np.float64)
    n = a.shape[0]
    s = a @ c.T / tau
    log_p = ref_log_softmax(s)
    wn = w / w.sum(axis=1, keepdims=True)
    loss = -(wn * log_p).sum() / n
    g = (np.exp(log_p) - wn) / n  # dL/ds
    return loss, g @ c / tau, g.T @ a / tau, -(g * s).sum() / tau


def ref_siglip(anchors, candidates, tau, bias):
    """-> (loss, dL/d anchors, dL/d candidates, dL/d tau, dL/d bias)."""
    a, c = np.asarray(anchors, np.float64), np.asarray(candidates, np.float64)
    n = a.shape[0]
    x = a @ c.T
    z = x / tau + bias
    y = 2 * np.eye(n) - 1
    loss = np.logaddexp(0, -y * z).sum() / n  # -log sigmoid(y z) summed
    g = (1 / (1 + np.exp(-z)) - np.eye(n)) / n  # dL/dz
    return loss, g @ c / tau, g.T @ a / tau, -(g * x).sum() / tau**2, g.sum()


def ref_accuracy(anchors, candidates):
    s = np.asarray(anchors, np.float64) @ np.asarray(candidates, np.float64).T
    return np.mean(np.argmax(s, axis=1) == np.arange(s.shape[0]))


def ref_target_statistics(w):
    """(mean row entropy of Wn = W / rowsum, mean 1 / sum_j Wn_ij^2)."""
    wn = w / w.sum(axis=1, keepdims=True)
    entropy = -(wn * np.log(np.where(wn > 0, wn, 1.0))).sum(axis=1)
    return entropy.mean(), (1 / (wn**2).sum(axis=1)).mean()


# ------------------------------------------------------------------ data
def embeddings(n, d, seed, d_raw=6, dtype=jnp.float32):
    """Unit-norm (anchors [n, d], candidates [n, d]) and raw frozen [n, d_raw]."""
    ka, kc, kr = jax.random.split(jax.random.key(seed), 3)
    unit = lambda k, w: ref_normalize(jax.random.normal(k, (n, w)))
    a, c = (jnp.asarray(unit(k, d), dtype) for k in (ka, kc))
    return a, c, jax.random.normal(kr, (n, d_raw))


def loss_and_grads(fn, *args, argnums=(0, 1, 2), **kwargs):
    return jax.jit(jax.value_and_grad(lambda *a: fn(*a, **kwargs), argnums=argnums))(*args)


# Compiled once per shape and static arguments, shared by the tests below.
weights_fn = jax.jit(similarity_weights, static_argnames=("kind", "exp_temperature"))


@functools.partial(jax.jit, static_argnames=("kind", "block_size"))
def cwcl_frozen(anchors, candidates, frozen, temperature, *, kind="paper", block_size=None):
    """(loss, (d/d anchors, d/d candidates, d/d temperature)) with weights from frozen."""
    fn = lambda a, c, t: cwcl_loss(
        a, c, frozen=frozen, weight_kind=kind, temperature=t, block_size=block_size
    )
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(anchors, candidates, temperature)


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 9])
def test_similarity_weights_match_reference(kind, n):
    _, _, frozen = embeddings(n, 4, seed=n)
    w = weights_fn(frozen, kind, exp_temperature=0.3, shuffle_seed=5)
    chex.assert_shape(w, (n, n))
    chex.assert_type(w, jnp.float32)
    np.testing.assert_allclose(w, ref_weights(frozen, kind, 0.3, seed=5), rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_weights_in_unit_interval_with_unit_diagonal(kind, seed, scale):
    _, _, frozen = embeddings(12, 3, seed)
    w = np.asarray(weights_fn(frozen * scale, kind, shuffle_seed=seed))
    assert np.all((w >= 0) & (w <= 1))
    np.testing.assert_array_equal(np.diag(w), 1.0)
    np.testing.assert_allclose(w, w.T, atol=1e-6)


def test_shuffled_is_a_relabelled_paper_kernel():
    _, _, frozen = embeddings(16, 4, seed=3)
    paper, shuffled = (np.asarray(weights_fn(frozen, k)) for k in ("paper", "shuffled"))
    assert not np.allclose(paper, shuffled)
    # Same similarity values, assigned to other pairs.
    np.testing.assert_allclose(np.sort(paper, axis=None), np.sort(shuffled, axis=None), atol=1e-6)
    other_seed = weights_fn(frozen, "shuffled", shuffle_seed=1)
    assert not np.allclose(shuffled, other_seed)


# ------------------------------------------------------------------ cwcl_loss vs numpy
SOURCES = [*KINDS, "explicit", "none"]
CWCL_CASES = [  # (n, d, temperature, block_size, source)
    *((13, 8, 0.07, None, source) for source in SOURCES),
    *((13, 8, 0.07, 4, source) for source in SOURCES),  # 4 blocks, the last one padded
    (8, 4, 0.5, None, "paper"),
    (13, 8, 0.07, 13, "paper"),
    (5, 3, 1.0, 64, "exp"),  # block larger than the batch
]


def cwcl_inputs(source, frozen, n):
    """(weights, keyword args of cwcl_loss, reference W) for a weight source."""
    if source == "none":
        return None, {}, np.eye(n)
    if source == "explicit":
        rng = np.random.default_rng(n)
        w = rng.uniform(0.0, 1.0, (n, n)) + np.eye(n)
        return jnp.asarray(w, jnp.float32), {}, w
    kwargs = {"frozen": frozen, "weight_kind": source, "weight_kwargs": {"exp_temperature": 0.2}}
    return None, kwargs, ref_weights(frozen, source, 0.2)


@pytest.mark.parametrize(("n", "d", "temperature", "block_size", "source"), CWCL_CASES)
def test_cwcl_loss_and_gradients_match_reference(n, d, temperature, block_size, source):
    a, c, frozen = embeddings(n, d, seed=n + d)
    weights, kwargs, w_ref = cwcl_inputs(source, frozen, n)
    loss, (ga, gc, gt) = loss_and_grads(
        lambda a, c, t: cwcl_loss(a, c, weights, temperature=t, block_size=block_size, **kwargs),
        a, c, jnp.float32(temperature),
    )  # fmt: skip
    ref = ref_cwcl(a, c, w_ref, temperature)
    for got, want in zip((loss, ga, gc, gt), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("block_size", [None, 3])
def test_identity_weights_give_standard_infonce(block_size):
    a, c, frozen = embeddings(9, 5, seed=1)
    logits = a @ c.T / 0.1
    infonce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(9)).mean()
    for kwargs in ({}, {"weights": jnp.eye(9)}, {"frozen": frozen, "weight_kind": "identity"}):
        fn = lambda a, c, kw=kwargs: cwcl_loss(a, c, temperature=0.1, block_size=block_size, **kw)
        np.testing.assert_allclose(jax.jit(fn)(a, c), infonce, rtol=1e-6)


@pytest.mark.parametrize("block_size", [None, 4])
def test_weights_are_constants_for_autodiff(block_size):
    a, c, frozen = embeddings(10, 4, seed=2)
    fn = lambda f, w: (
        cwcl_loss(a, c, frozen=f, temperature=0.1, block_size=block_size)
        + (cwcl_loss(a, c, w, temperature=0.1, block_size=block_size))
    )
    grads = jax.jit(jax.grad(fn, argnums=(0, 1)))(frozen, jnp.ones((10, 10)))
    chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, grads))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), block_size=st.sampled_from([None, 4]))
def test_loss_invariant_to_permuting_pairs(seed, block_size):
    a, c, frozen = embeddings(11, 4, seed)
    perm = np.random.default_rng(seed).permutation(11)
    loss, _ = cwcl_frozen(a, c, frozen, 0.1, block_size=block_size)
    permuted, _ = cwcl_frozen(a[perm], c[perm], frozen[perm], 0.1, block_size=block_size)
    np.testing.assert_allclose(permuted, loss, rtol=1e-6)


@settings(max_examples=6, deadline=None)
@given(
    shape=st.sampled_from([(1, 1), (11, 4), (11, 11), (11, 64), (24, 5)]),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)
def test_blockwise_equals_dense(shape, kind, seed):
    (n, block_size), d = shape, 4
    a, c, frozen = embeddings(n, d, seed)
    dense = cwcl_frozen(a, c, frozen, 0.2, kind=kind)
    blocks = cwcl_frozen(a, c, frozen, 0.2, kind=kind, block_size=block_size)
    chex.assert_trees_all_close(blocks, dense, rtol=2e-5, atol=1e-6)


def test_blockwise_never_builds_an_n_by_n_array():
    n, block = 64, 8
    a, c, frozen = embeddings(n, 4, seed=0)
    fn = lambda a, c, t: cwcl_loss(a, c, frozen=frozen, temperature=t, block_size=block)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=(0, 1, 2)))(a, c, 0.1)
    shapes = {v.aval.shape for eqn in _all_eqns(jaxpr.jaxpr) for v in eqn.outvars}
    assert (block, n) in shapes  # one row block against all columns
    assert not [s for s in shapes if s.count(n) >= 2 or np.prod(s) >= n * n]


def _all_eqns(jaxpr):
    yield from jaxpr.eqns
    for sub in jax.extend.core.subjaxprs(jaxpr):
        yield from _all_eqns(sub)


@pytest.mark.parametrize("block_size", [None, 4])
def test_stable_with_very_large_logits(block_size):
    a, c, frozen = embeddings(12, 4, seed=7)
    for inverse_temperature in (100.0, 1e4):
        tau = 1.0 / inverse_temperature
        loss, grads = cwcl_frozen(a, c, frozen, jnp.float32(tau), block_size=block_size)
        ref = ref_cwcl(a, c, ref_weights(frozen, "paper"), tau)
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)
        np.testing.assert_allclose(loss, ref[0], rtol=1e-4)
        np.testing.assert_allclose(grads[0], ref[1], atol=1e-4 * np.abs(ref[1]).max())


@pytest.mark.parametrize("block_size", [None, 5])
def test_bfloat16_inputs_accumulate_in_float32(block_size):
    a, c, frozen = embeddings(16, 32, seed=4, dtype=jnp.bfloat16)
    loss, (ga, gc, gt) = cwcl_frozen(a, c, frozen, jnp.float32(0.01), block_size=block_size)
    chex.assert_type([loss, ga, gc, gt], [jnp.float32, jnp.bfloat16, jnp.bfloat16, jnp.float32])
    # Reference on the same bf16-rounded inputs: only products/reductions may differ.
    a64, c64 = (np.asarray(x, np.float64) for x in (a, c))
    ref = ref_cwcl(a64, c64, ref_weights(frozen, "paper"), 0.01)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
    for got, want in zip((ga, gc), ref[1:3], strict=True):
        np.testing.assert_allclose(np.float32(got), want, atol=1e-2 * np.abs(want).max())


# ------------------------------------------------------------------ siglip
@pytest.mark.parametrize("block_size", [None, 3, 100])
@pytest.mark.parametrize(("temperature", "bias"), [(0.1, -10.0), (0.5, 1.5)])
def test_siglip_matches_reference(block_size, temperature, bias):
    a, c, _ = embeddings(10, 6, seed=9)
    got = loss_and_grads(
        lambda a, c, t, b: siglip_loss(a, c, temperature=t, bias=b, block_size=block_size),
        a, c, jnp.float32(temperature), jnp.float32(bias), argnums=(0, 1, 2, 3),
    )  # fmt: skip
    want = ref_siglip(a, c, temperature, bias)
    for g, w in zip(jax.tree.leaves(got), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------ two towers
def ref_two_tower(p, q, frozen_raw, tau, config, bias=None):
    """(loss, metrics) of the two-tower objective from the reference pieces."""
    if config.name == "siglip":
        loss = ref_siglip(p, q, tau, bias)[0]
        w_t2f = w_f2t = np.eye(len(p))
    else:
        weighted = config.cwcl_directions if config.name == "cwcl" else ()
        kinds = [config.weight_kind if d in weighted else "identity" for d in losses.DIRECTIONS]
        w_t2f, w_f2t = (ref_weights(frozen_raw, k, config.exp_temperature) for k in kinds)
        loss = config.direction_weights[0] * ref_cwcl(p, q, w_t2f, tau)[0]
        loss += config.direction_weights[1] * ref_cwcl(q, p, w_f2t, tau)[0]
    weighted = w_t2f if not np.array_equal(w_t2f, np.eye(len(p))) else w_f2t
    entropy, effective = ref_target_statistics(weighted)
    metrics = {
        "accuracy_t2f": ref_accuracy(p, q),
        "accuracy_f2t": ref_accuracy(q, p),
        "target_entropy": entropy,
        "effective_positives": effective,
        "temperature": tau,
    }
    return loss, metrics


def config_id(config: LossConfig) -> str:
    """The fields that differ from the defaults, for readable test ids."""
    fields = dataclasses.fields(config)
    changed = [
        f"{f.name}={getattr(config, f.name)}"
        for f in fields
        if getattr(config, f.name) != f.default
    ]
    return ",".join(changed) or "default"


TWO_TOWER_CONFIGS = [
    LossConfig(),
    LossConfig(block_size=4),
    LossConfig(cwcl_directions=losses.DIRECTIONS, direction_weights=(0.3, 1.2), weight_kind="exp"),
    LossConfig(cwcl_directions=("frozen_to_trainable",), weight_kind="shuffled", block_size=5),
    LossConfig(name="cl"),
    LossConfig(name="siglip", block_size=3),
]


@pytest.mark.parametrize("config", TWO_TOWER_CONFIGS, ids=config_id)
def test_two_tower_loss_matches_reference(config):
    p, q, frozen_raw = embeddings(14, 6, seed=11, d_raw=5)
    q = q.at[:7].set(p[:7])  # some pairs match exactly, so accuracies are not trivial
    fn = jax.jit(lambda *x: two_tower_loss(*x[:3], temperature=x[3], bias=x[4], config=config))
    loss, metrics = fn(p, q, frozen_raw, 0.07, -2.0)
    ref_loss, ref_metrics = ref_two_tower(p, q, frozen_raw, 0.07, config, bias=-2.0)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
    assert metrics.keys() == ref_metrics.keys()
    for key, value in metrics.items():
        np.testing.assert_allclose(value, ref_metrics[key], rtol=2e-5, err_msg=key)


def test_two_tower_default_is_cwcl_then_plain_cl():
    p, q, frozen_raw = embeddings(8, 4, seed=12)

    def both(p, q, frozen_raw):
        loss, metrics = two_tower_loss(p, q, frozen_raw, temperature=0.1, config=LossConfig())
        t2f = cwcl_loss(p, q, frozen=frozen_raw, weight_kind="paper", temperature=0.1)
        return loss, t2f + cwcl_loss(q, p, temperature=0.1), metrics

    loss, expected, metrics = jax.jit(both)(p, q, frozen_raw)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert metrics["effective_positives"] > 1.0  # the paper kernel spreads the target


def test_two_tower_gradients_reach_temperature_and_bias():
    p, q, frozen_raw = embeddings(8, 4, seed=13)
    config = LossConfig(name="siglip", block_size=3)
    fn = lambda t, b: two_tower_loss(p, q, frozen_raw, temperature=t, bias=b, config=config)[0]
    grad_t, grad_b = jax.jit(jax.grad(fn, argnums=(0, 1)))(0.1, -10.0)
    ref = ref_siglip(p, q, 0.1, -10.0)
    np.testing.assert_allclose([grad_t, grad_b], ref[3:], rtol=2e-5)


def test_loss_config_from_config_dict():
    config = ml_collections.ConfigDict(
        {"name": "cwcl", "weight_kind": "exp", "exp_temperature": 0.05, "shuffle_seed": 3,
         "cwcl_directions": ["trainable_to_frozen", "frozen_to_trainable"],
         "direction_weights": [1, 0.5], "block_size": 256}
    )  # fmt: skip
    loss_config = LossConfig(**config)
    assert loss_config.cwcl_directions == losses.DIRECTIONS
    assert loss_config.direction_weights == (1.0, 0.5)
    assert hash(loss_config)  # usable as a static jit argument


# ------------------------------------------------------------------ errors
A, C, F = (jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones((4, 2)))
ERRORS = [
    (lambda: cwcl_loss(A, jnp.ones((5, 3)), temperature=0.1), "candidates has 5 rows"),
    (lambda: cwcl_loss(A, jnp.ones((4, 2)), temperature=0.1), "candidates has width 2"),
    (lambda: cwcl_loss(jnp.ones(4), C, temperature=0.1), r"anchors must be a float array \[N, D\]"),
    (lambda: cwcl_loss(A.astype(int), C, temperature=0.1), "anchors must be a float array"),
    (
        lambda: cwcl_loss(A, C, jnp.ones((4, 3)), temperature=0.1),
        r"weights must have shape \(4, 4\)",
    ),
    (lambda: cwcl_loss(A, C, jnp.eye(4), frozen=F, temperature=0.1), "either weights or frozen"),
    (lambda: cwcl_loss(A, C, frozen=jnp.ones((3, 2)), temperature=0.1), "frozen has 3 rows"),
    (lambda: cwcl_loss(A, C, temperature=0.0), "temperature must be > 0, got 0.0"),
    (lambda: cwcl_loss(A, C, temperature=-1), "temperature must be > 0"),
    (lambda: cwcl_loss(A, C, temperature=jnp.ones(2)), "temperature must be a scalar"),
    (
        lambda: cwcl_loss(A, C, temperature=0.1, block_size=0),
        "block_size must be None or a positive int",
    ),
    (lambda: cwcl_loss(A, C, temperature=0.1, block_size=2.0), "block_size must be None"),
    (
        lambda: cwcl_loss(A, C, frozen=F, weight_kind="cosine", temperature=0.1),
        "weight_kind must be one of",
    ),
    (
        lambda: cwcl_loss(A, C, frozen=F, weight_kwargs={"tau": 1}, temperature=0.1),
        r"weight_kwargs has unknown keys \['tau'\]",
    ),
    (
        lambda: cwcl_loss(A, C, frozen=F, weight_kwargs={"exp_temperature": 0}, temperature=0.1),
        "exp_temperature must be > 0",
    ),
    (lambda: similarity_weights(F, "gaussian"), "kind must be one of"),
    (lambda: siglip_loss(A, C, temperature=0.1, bias=jnp.ones(3)), "bias must be a scalar"),
    (lambda: siglip_loss(A, C, temperature=jnp.nan, bias=0.0), "temperature must be > 0, got nan"),
    (lambda: LossConfig(name="clip"), "loss name must be one of"),
    (lambda: LossConfig(weight_kind="cos"), "weight_kind must be one of"),
    (lambda: LossConfig(cwcl_directions=("t2f",)), "cwcl_directions must be distinct names"),
    (lambda: LossConfig(cwcl_directions="trainable_to_frozen"), "cwcl_directions must be a tuple"),
    (lambda: LossConfig(cwcl_directions=()), "that is plain contrastive, name='cl'"),
    (lambda: LossConfig(direction_weights=(1.0,)), "direction_weights must be 2 floats"),
    (lambda: LossConfig(direction_weights=(0, 0)), "not both 0"),
    (lambda: LossConfig(block_size=-4), "block_size must be None or a positive int"),
    (lambda: LossConfig(exp_temperature=0.0), "exp_temperature must be > 0"),
    (lambda: LossConfig(shuffle_seed=1.5), "shuffle_seed must be an int"),
    (lambda: two_tower_loss(A, C, F, temperature=0.1, config={}), "config must be a LossConfig"),
    (
        lambda: two_tower_loss(A, C, F[:3], temperature=0.1, config=LossConfig()),
        "frozen_raw has 3 rows",
    ),
    (
        lambda: two_tower_loss(A, C, F, temperature=0.1, config=LossConfig(name="siglip")),
        "needs bias",
    ),
]


@pytest.mark.parametrize(("call", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_concrete_checks_also_run_under_jit():
    with pytest.raises(ValueError, match="weights must have shape"):
        jax.jit(lambda a, c: cwcl_loss(a, c, jnp.ones((4, 3)), temperature=0.1))(A, C)
    # A traced temperature cannot be checked for sign; it is accepted.
    assert np.isfinite(jax.jit(lambda t: cwcl_loss(A, C, temperature=t))(0.5))
