"""cwcl_shapes: geometry against analytic areas, colors, captions, and the TFDS build."""

import re

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

import cwcl_jax.data  # noqa: F401  (registers the builders)
from cwcl_jax.data import shapes

# Area / radius^2 of each shape, from plane geometry (independent of the renderer).
_AREA_OVER_R2 = {
    "circle": np.pi,
    "square": 2.0,  # side r * sqrt(2)
    "triangle": 3 * np.sqrt(3) / 4,
    "diamond": 2.0 * 0.65,  # a square on its corner, squeezed to 65% of its width
    "pentagon": 2.5 * np.sin(2 * np.pi / 5),
    "hexagon": 3 * np.sqrt(3) / 2,
    "star": 5 * 0.45 * np.sin(np.pi / 5),  # n * R * r_inner * sin(pi / n)
    "cross": 2 * (2 * 0.64) - 0.64**2,  # two 2r x 0.64r bars minus their overlap
}


@pytest.mark.parametrize("name", shapes.SHAPES)
def test_coverage_matches_analytic_area_and_center(name):
    size, radius = 96, 30.0
    kind = np.array([shapes.SHAPES.index(name)])
    geometry = {k: np.array([v], np.float32) for k, v in dict(cx=47.0, cy=49.0, angle=0.2).items()}
    alpha = shapes.coverage(kind, radius=np.array([radius], np.float32), size=size, **geometry)[0]
    chex.assert_shape(alpha, (size, size))
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    np.testing.assert_allclose(alpha.sum(), _AREA_OVER_R2[name] * radius**2, rtol=0.02)
    # Every shape is symmetric under rotation about its center, so its centroid sits there.
    ys, xs = np.mgrid[:size, :size] + 0.5
    centroid = (np.sum(alpha * xs) / alpha.sum(), np.sum(alpha * ys) / alpha.sum())
    np.testing.assert_allclose(centroid, (47.0, 49.0), atol=0.15)


def test_rendered_colors_and_positions_follow_the_labels():
    rng = np.random.default_rng(3)
    attributes = shapes.sample_attributes(rng, 200)
    images, alpha = shapes.render_images(rng, attributes, 64)
    chex.assert_shape(images, (200, 64, 64, 3))
    chex.assert_type(images, np.uint8)
    palette = np.array(list(shapes.COLORS.values()), np.float32)
    ys, xs = np.mgrid[:64, :64] + 0.5
    for i in range(200):
        inside = alpha[i] == 1.0
        mean_color = images[i][inside].astype(np.float32).mean(axis=0)
        # Shade jitter is +-12 and the noise averages out: the label's palette entry is nearest.
        assert np.argmin(np.abs(palette - mean_color).sum(axis=1)) == attributes["color"][i]
        row, col = divmod(int(attributes["position"][i]), 3)
        cx, cy = np.sum(alpha[i] * xs) / alpha[i].sum(), np.sum(alpha[i] * ys) / alpha[i].sum()
        assert (int(cx // (64 / 3)), int(cy // (64 / 3))) == (col, row)


def test_rendering_is_deterministic_by_seed():
    config = shapes.ShapesConfig(name="t", image_size=16, num_train=10, num_test=10, seed=5)
    first = shapes.render_chunk(config, split_id=0, start=0, count=10)
    again = shapes.render_chunk(config, split_id=0, start=0, count=10)
    other = shapes.render_chunk(config, split_id=1, start=0, count=10)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["caption"] == b["caption"]
    assert not np.array_equal(first[0]["image"], other[0]["image"])


_ALL_SHAPE_WORDS = {w: s for s, words in shapes._SHAPE_WORDS.items() for w in words}


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.integers(0, len(shapes.SHAPES) - 1),
    color=st.integers(0, len(shapes.COLORS) - 1),
    size=st.integers(0, len(shapes.SIZES) - 1),
    position=st.integers(0, len(shapes.POSITIONS) - 1),
    background=st.integers(0, len(shapes.BACKGROUNDS) - 1),
)
def test_captions_only_state_true_attributes(seed, shape, color, size, position, background):
    caption = shapes.make_caption(
        np.random.default_rng(seed),
        shape=shape,
        color=color,
        size=size,
        position=position,
        background=background,
    )
    assert caption and "{" not in caption and caption == caption.strip()
    words = set(re.findall(r"[a-z-]+", caption))
    assert words & set(shapes.COLORS) <= {list(shapes.COLORS)[color]}
    named = {s for w, s in _ALL_SHAPE_WORDS.items() if re.search(rf"\b{w}\b", caption)}
    assert named <= {shapes.SHAPES[shape]}
    assert not re.search(r"\ba [aeiou]", caption) and not re.search(r"\ban [^aeiou]", caption)


def test_captions_are_varied():
    rng = np.random.default_rng(0)
    captions = {
        shapes.make_caption(rng, shape=2, color=0, size=0, position=0, background=0)
        for _ in range(300)
    }
    assert len(captions) > 100
    assert any("triangle" in c and "red" in c and "top left" in c for c in captions)


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
    builder = tfds.builder("cwcl_shapes/tiny", data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


def test_tiny_build_loads_offline_with_labels_and_class_names(tiny_builder):
    info = tiny_builder.info
    assert info.splits["train"].num_examples == 256 and info.splits["test"].num_examples == 128
    assert info.file_format.value == "tfrecord"  # so that tfds.load reads it
    assert len(info.features["shape"].names) >= 6 and len(info.features["color"].names) >= 8
    assert info.features["color"].names == list(shapes.COLORS)
    loaded = tfds.load("cwcl_shapes/tiny", split="test", data_dir=tiny_builder.data_dir_root)
    examples = list(loaded.as_numpy_iterator())
    assert len(examples) == 128
    chex.assert_shape([e["image"] for e in examples], (32, 32, 3))
    assert all(e["caption"] for e in examples)
    assert {e["shape"] for e in examples} == set(range(len(shapes.SHAPES)))
