"""`cwcl_shapes`: procedural image-caption pairs (shapes in colors), built offline in seconds.

Each 64x64 (configurable) image holds one shape (8 kinds) in one color (10 names, jittered),
with a size (3), a position (3x3 grid, jittered) and a background (plain, gradient, stripes,
checkers or blotches), plus pixel noise. Its caption paraphrases some or all attributes
from many templates ("a small red triangle near the top left", "there is a star, blue, in
the middle"). Every attribute is a ClassLabel feature, so zero-shot tasks read the class
names from the builder info. Rendering is vectorized numpy over chunks of images; the
output is a deterministic function of the config's seed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cwcl_jax.data import builder_utils

SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
    "brown": (130, 80, 40),
    "white": (245, 245, 245),
}
SIZES = ("small", "medium", "large")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
BACKGROUNDS = ("plain", "gradient", "stripes", "checkers", "blotches")

# Shape radius as a fraction of the image side, per size class.
_RADIUS_RANGE = {"small": (0.10, 0.14), "medium": (0.17, 0.22), "large": (0.25, 0.31)}
# Regular polygons: (sides, angle of the first vertex); a diamond is a squeezed square.
_POLYGONS = {
    "triangle": (3, -np.pi / 2),
    "square": (4, np.pi / 4),
    "diamond": (4, 0.0),
    "pentagon": (5, -np.pi / 2),
    "hexagon": (6, 0.0),
}
_DIAMOND_WIDTH = 0.65
_STAR_POINTS, _STAR_INNER_RATIO = 5, 0.45
_CHUNK = 256  # images rendered per vectorized call; fixed so output does not depend on it


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Image side in pixels, split sizes and the seed everything is drawn from."""

    image_size: int = 64
    num_train: int = 20_000
    num_test: int = 2_000
    seed: int = 0


class CwclShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes with paraphrased captions; labels shape/color/size/position/background.

    Prepared as TFRecord (TFDS's default), so `tfds.load` reads it; the pipeline reads it
    by index all the same (`sources.TfrecordRecords`). `file_format="array_record"` builds
    the format `tfds.data_source` needs instead.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="64x64 images, 20000 train / 2000 test."),
        ShapesConfig(
            name="tiny",
            description="32x32 images, 256 train / 128 test: smoke tests and quick demos.",
            image_size=32,
            num_train=256,
            num_test=128,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "caption": tfds.features.Text(),
                    "shape": tfds.features.ClassLabel(names=SHAPES),
                    "color": tfds.features.ClassLabel(names=tuple(COLORS)),
                    "size": tfds.features.ClassLabel(names=SIZES),
                    "position": tfds.features.ClassLabel(names=POSITIONS),
                    "background": tfds.features.ClassLabel(names=BACKGROUNDS),
                }
            ),
            supervised_keys=("image", "caption"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # procedural: nothing to download
        config = self.builder_config
        return {
            "train": self._generate_examples(split_id=0, num_examples=config.num_train),
            "test": self._generate_examples(split_id=1, num_examples=config.num_test),
        }

    def _generate_examples(self, split_id: int, num_examples: int) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        starts = range(0, num_examples, _CHUNK)
        render = lambda start: render_chunk(
            config, split_id, start, min(_CHUNK, num_examples - start)
        )
        # Chunks render in threads (numpy releases the GIL); each has its own seeded rng.
        chunks = builder_utils.ordered_parallel_map(render, starts, chunk_size=4)
        for start, examples in zip(starts, chunks, strict=True):
            yield from enumerate(examples, start)


def render_chunk(config: ShapesConfig, split_id: int, start: int, count: int) -> list[dict]:
    """Examples start..start+count-1 of a split: a pure function of (seed, split, start)."""
    rng = np.random.default_rng([config.seed, split_id, start])
    attributes = sample_attributes(rng, count)
    images, _ = render_images(rng, attributes, config.image_size)
    examples = []
    for i in range(count):
        labels = {name: int(values[i]) for name, values in attributes.items()}
        examples.append({"image": images[i], "caption": make_caption(rng, **labels), **labels})
    return examples


def sample_attributes(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Uniform class indices `[count]` for shape, color, size, position and background."""
    return {
        "shape": rng.integers(len(SHAPES), size=count),
        "color": rng.integers(len(COLORS), size=count),
        "size": rng.integers(len(SIZES), size=count),
        "position": rng.integers(len(POSITIONS), size=count),
        "background": rng.integers(len(BACKGROUNDS), size=count),
    }


def render_images(
    rng: np.random.Generator, attributes: dict[str, np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 `[count, size, size, 3]` of the given attributes (class-index arrays),
    and the shapes' coverage float32 `[count, size, size]` in [0, 1]."""
    count = len(attributes["shape"])
    background = _render_backgrounds(rng, attributes["background"], size)
    geometry = sample_geometry(rng, attributes, size)
    alpha = coverage(attributes["shape"], size=size, **geometry)
    base_colors = np.array(list(COLORS.values()), np.float32)[attributes["color"]]
    colors = base_colors + rng.uniform(-12, 12, (count, 3)).astype(np.float32)  # shade jitter
    image = background + (colors[:, None, None, :] - background) * alpha[..., None]
    noise_level = rng.uniform(0, 8, (count, 1, 1, 1)).astype(np.float32)
    image += rng.standard_normal((count, size, size, 1), dtype=np.float32) * noise_level
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), alpha


def sample_geometry(rng: np.random.Generator, attributes: dict, size: int) -> dict:
    """Center `cx, cy`, `radius` (pixels) and rotation `angle` (radians), float32 `[count]`."""
    count = len(attributes["shape"])
    size_names = np.array(SIZES)[attributes["size"]]
    low, high = np.array([_RADIUS_RANGE[s] for s in size_names]).T
    radius = rng.uniform(low, high) * size
    row, col = np.divmod(attributes["position"], 3)
    cell = size / 3
    # Cell center plus jitter, kept so that at least 85% of the radius stays inside the image.
    cx, cy = ((index + 0.5 + rng.uniform(-0.25, 0.25, count)) * cell for index in (col, row))
    cx, cy = (np.clip(c, 0.85 * radius, size - 0.85 * radius) for c in (cx, cy))
    angle = rng.uniform(-0.26, 0.26, count)  # +-15 degrees keeps squares apart from diamonds
    return {
        k: v.astype(np.float32) for k, v in dict(cx=cx, cy=cy, radius=radius, angle=angle).items()
    }


def coverage(
    shapes: np.ndarray,
    *,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    size: int,
) -> np.ndarray:
    """Anti-aliased coverage `[count, size, size]` in [0, 1] of shapes (indices into SHAPES)
    with centers, radii and rotations `[count]` (pixels, radians)."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    distance = np.empty((len(shapes), size, size), np.float32)
    for index, name in enumerate(SHAPES):
        chosen = shapes == index
        if chosen.any():
            distance[chosen] = _signed_distance(name, u[chosen], v[chosen], radius[chosen])
    return np.clip(distance + 0.5, 0.0, 1.0)


def _signed_distance(name: str, u: np.ndarray, v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Distance in pixels to the shape's edge `[n, S, S]`, positive inside."""
    r = radius[:, None, None]
    if name == "circle":
        return r - np.hypot(u, v)
    if name == "cross":
        half_width = 0.32 * r
        horizontal = np.minimum(half_width - np.abs(v), r - np.abs(u))
        vertical = np.minimum(half_width - np.abs(u), r - np.abs(v))
        return np.maximum(horizontal, vertical)
    if name == "star":
        return _star_distance(u, v, r)
    sides, first_vertex = _POLYGONS[name]
    if name == "diamond":
        u = u / _DIAMOND_WIDTH
    return _polygon_distance(u, v, r, sides, first_vertex)


def _polygon_distance(u, v, r, sides: int, first_vertex: float) -> np.ndarray:
    """Regular polygon of circumradius r: the apothem minus the largest projection on the
    edges' outward normals (exact inside, a lower bound outside; trig-free per pixel)."""
    normals = first_vertex + np.pi / sides * (1 + 2 * np.arange(sides))
    projection = functools.reduce(np.maximum, (u * np.cos(a) + v * np.sin(a) for a in normals))
    return r * np.cos(np.pi / sides) - projection


def _star_distance(u, v, r) -> np.ndarray:
    """Five-pointed star of outer radius r, first point up.

    Folding the angle into [0, pi/5] (measured from the nearest outer vertex) leaves one
    edge, from the outer vertex O = (r, 0) to the inner vertex I, to measure against.
    """
    sector = 2 * np.pi / _STAR_POINTS
    phi = np.mod(np.arctan2(v, u) + np.pi / 2, sector)
    phi = np.minimum(phi, sector - phi)
    rho = np.hypot(u, v)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ex = _STAR_INNER_RATIO * np.cos(sector / 2) * r - r  # edge vector I - O
    ey = _STAR_INNER_RATIO * np.sin(sector / 2) * r
    # cross(I - O, P - O) / |I - O|: positive on the center's side of the edge.
    return (ex * py - ey * (px - r)) / np.hypot(ex, ey)


def _render_backgrounds(rng: np.random.Generator, kinds: np.ndarray, size: int) -> np.ndarray:
    """float32 `[count, size, size, 3]` muted backgrounds, dark enough for white shapes."""
    count = len(kinds)
    base = rng.uniform(40, 140, (count, 1, 1, 1)) + rng.uniform(-20, 20, (count, 1, 1, 3))
    base = base.astype(np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = grid[None, None, :], grid[None, :, None]
    direction = rng.uniform(0, 2 * np.pi, (count, 1, 1)).astype(np.float32)
    along = x * np.cos(direction) + y * np.sin(direction)
    frequency = rng.uniform(3, 7, (count, 1, 1)).astype(np.float32)
    texture = np.zeros((count, size, size), np.float32)
    # "plain" (index 0) keeps a zero texture.
    _, gradient, stripes, checkers, blotches = (kinds == i for i in range(len(BACKGROUNDS)))
    texture[gradient] = (along[gradient] - 0.5) * 50
    texture[stripes] = 18 * np.sign(np.sin(2 * np.pi * frequency[stripes] * along[stripes]))
    cells = np.floor(x * frequency) + np.floor(y * frequency)
    texture[checkers] = 15 * (2 * np.mod(cells[checkers], 2) - 1)
    texture[blotches] = _blotches(rng, int(blotches.sum()), size)
    return base + texture[..., None]


def _blotches(rng: np.random.Generator, count: int, size: int, coarse: int = 6) -> np.ndarray:
    """Smooth random texture `[count, size, size]`: a coarse grid upsampled bilinearly."""
    positions = np.clip((np.arange(size) + 0.5) * coarse / size - 0.5, 0, coarse - 1)
    lower = np.minimum(np.floor(positions).astype(int), coarse - 2)
    weight = positions - lower
    interp = np.zeros((size, coarse), np.float32)
    interp[np.arange(size), lower] = 1 - weight
    interp[np.arange(size), lower + 1] = weight
    coarse_grid = rng.uniform(-25, 25, (count, coarse, coarse)).astype(np.float32)
    return np.einsum("yi,nij,xj->nyx", interp, coarse_grid, interp)


# --- captions ---------------------------------------------------------------------------

_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "pentagon": ("pentagon", "five-sided shape"),
    "hexagon": ("hexagon", "six-sided shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
}
_SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium-sized", "mid-sized", "medium"),
    "large": ("large", "big", "huge"),
}
_POSITION_PHRASES = {
    "top left": ("in the top left", "near the top left", "in the upper left corner"),
    "top": ("at the top", "near the top edge", "in the upper middle"),
    "top right": ("in the top right", "near the top right", "in the upper right corner"),
    "left": ("on the left", "at the left side", "to the left"),
    "center": ("in the center", "in the middle", "at the centre of the image"),
    "right": ("on the right", "at the right side", "to the right"),
    "bottom left": ("in the bottom left", "near the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "near the bottom edge", "in the lower middle"),
    "bottom right": ("in the bottom right", "near the bottom right", "in the lower right corner"),
}
_BACKGROUND_PHRASES = {
    "plain": ("on a plain background", "against a flat background"),
    "gradient": ("on a gradient background", "over a shaded background"),
    "stripes": ("on a striped background", "over stripes"),
    "checkers": ("on a checkered background", "over a checkerboard"),
    "blotches": ("on a blotchy background", "over a mottled texture"),
}
# {np} is a noun phrase (article, maybe size and color, shape); the other slots one attribute.
_TEMPLATES = (
    "{np}",
    "{np} {pos}",
    "{np} {pos} {bg}",
    "{np} {bg}",
    "there is {np} {pos}",
    "there is a {shape}, {color}, {pos}",
    "a photo of {np}",
    "a photo of {np} {pos}",
    "an image showing {np} {pos}",
    "a drawing of {np} {bg}",
    "you can see {np} {pos}",
    "the picture contains {np}",
    "{np}, drawn {pos}",
    "{np} placed {pos}",
    "a {color} {shape}",
    "{color} {shape}",
    "the {shape} is {color}",
    "the {shape} is {color} and sits {pos}",
    "a {size} {shape} in {color}",
    "a {shape} colored {color} {pos}",
    "a {size} {color} {shape} {pos}",
    "something {color} {pos}",
    "a {size} shape {pos} {bg}",
    "{pos} there is {np}",
)


def make_caption(
    rng: np.random.Generator, *, shape: int, color: int, size: int, position: int, background: int
) -> str:
    """One caption from a random template mentioning some or all of the attributes."""
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    shape_word = _pick(rng, _SHAPE_WORDS[SHAPES[shape]])
    color_word = tuple(COLORS)[color]
    size_word = _pick(rng, _SIZE_WORDS[SIZES[size]])
    words = [w for w, keep in ((size_word, 0.5), (color_word, 0.8)) if rng.random() < keep]
    caption = template.format(
        np="a " + " ".join([*words, shape_word]),
        shape=shape_word,
        color=color_word,
        size=size_word,
        pos=_pick(rng, _POSITION_PHRASES[POSITIONS[position]]),
        bg=_pick(rng, _BACKGROUND_PHRASES[BACKGROUNDS[background]]),
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]
