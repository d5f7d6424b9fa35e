"""Zero-shot and retrieval metrics against hand-computed cases and plain numpy references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cwcl_jax.eval import metrics, retrieval, zeroshot


def reference_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Independent reference: position of the first relevant item in a stable sort."""
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant_sorted = np.take_along_axis(relevant, order, axis=1)
    return np.argmax(relevant_sorted, axis=1)


@settings(max_examples=60, deadline=None)
@given(
    scores=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 7)),
        elements=st.integers(-3, 3).map(float),
    ),
    data=st.data(),
)
def test_first_relevant_rank_matches_stable_sort(scores, data):
    # Small integer scores force many ties: the tie rule (lower index first) is exercised.
    relevant = data.draw(hnp.arrays(bool, scores.shape))
    relevant[np.arange(scores.shape[0]), data.draw(st.integers(0, scores.shape[1] - 1))] = True
    np.testing.assert_array_equal(
        metrics.first_relevant_rank(scores, relevant), reference_rank(scores, relevant)
    )


def test_first_relevant_rank_rejects_row_without_relevant_item():
    relevant = np.array([[True, False], [False, False]])
    with pytest.raises(ValueError, match="row 1 has no relevant item"):
        metrics.first_relevant_rank(np.zeros((2, 2)), relevant)


def test_recall_at_k_clips_k_and_checks_input():
    ranks = np.array([0, 1, 2, 4])
    assert metrics.recall_at_k(ranks, (1, 2, 10), num_candidates=5) == {1: 0.25, 2: 0.5, 10: 1.0}
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.recall_at_k(ranks, (0,), 5)
    with pytest.raises(ValueError, match="no examples"):
        metrics.recall_at_k(np.zeros((0,), int), (1,), 5)


def test_confusion_and_per_class_accuracy_match_loops():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    labels[labels == 3] = 2  # class 3 never occurs: its accuracy is undefined (NaN)
    expected = np.zeros((4, 4), int)
    for t, p in zip(labels, preds, strict=True):
        expected[t, p] += 1
    confusion = metrics.confusion_matrix(labels, preds, 4)
    np.testing.assert_array_equal(confusion, expected)
    acc = metrics.per_class_accuracy(confusion)
    for c in range(3):
        assert acc[c] == pytest.approx(np.mean(preds[labels == c] == c))
    assert np.isnan(acc[3])


def test_l2_normalize_rejects_nan_and_bad_rank():
    with pytest.raises(ValueError, match="query embeddings contain NaN"):
        metrics.l2_normalize(np.array([[np.nan, 1.0]]), name="query embeddings")
    with pytest.raises(ValueError, match=r"must be \[n, dim\]"):
        metrics.l2_normalize(np.zeros(3))


# --- zero-shot -------------------------------------------------------------------------

CLASSES = ("cat", "dog", "bird", "fish")
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "{}")


def axis_embedder(dim: int = 6, bad_template: str | None = None):
    """Texts -> class axis + a small template-specific offset; `bad_template` maps every
    class to one vector, so a classifier built from it alone cannot tell classes apart."""
    offsets = {t: 0.1 * np.eye(dim)[-1 - i] for i, t in enumerate(TEMPLATES)}
    table = {}
    for c, name in enumerate(CLASSES):
        for template in TEMPLATES:
            vec = np.eye(dim)[c] + offsets[template]
            table[template.format(name)] = np.ones(dim) if template == bad_template else vec
    calls = []

    def embed_texts(texts):
        calls.append(len(texts))
        return np.stack([table[t] for t in texts]) * 3.0  # unnormalized on purpose

    return embed_texts, calls


def make_queries(labels, dim=6, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.eye(dim)[labels] + noise * rng.standard_normal((len(labels), dim))


def test_class_embeddings_is_renormalized_mean_of_normalized_prompts():
    embed_texts, calls = axis_embedder()
    prompts = zeroshot.embed_prompts(CLASSES, TEMPLATES, embed_texts, batch_size=5)
    assert prompts.shape == (4, 3, 6)
    assert calls == [5, 5, 2]  # 12 prompts in chunks of 5
    raw = np.stack([embed_texts([t.format(c) for t in TEMPLATES]) for c in CLASSES])
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    mean = unit.mean(axis=1)
    np.testing.assert_allclose(
        zeroshot.class_embeddings(prompts),
        mean / np.linalg.norm(mean, axis=-1, keepdims=True),
        rtol=1e-6,
    )


def test_zeroshot_known_answer():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    queries = make_queries(labels)
    queries[6] = np.eye(6)[1] + 0.3 * np.eye(6)[2]  # a bird that looks more like a dog
    embed_texts, _ = axis_embedder()
    prompts = zeroshot.embed_prompts(CLASSES, TEMPLATES, embed_texts)
    out = zeroshot.zeroshot_metrics(
        queries, labels, prompts, class_names=CLASSES, templates=TEMPLATES, ks=(1, 2, 5)
    )
    assert out["top1"] == 7 / 8
    assert out["top2"] == 1.0
    assert out["top5"] == 1.0  # k clipped to 4 classes
    assert out["per_class_accuracy"] == {"cat": 1.0, "dog": 1.0, "bird": 0.5, "fish": 1.0}
    assert out["mean_per_class_accuracy"] == pytest.approx(0.875)
    expected = 2 * np.eye(4, dtype=int)
    expected[2, 2], expected[2, 1] = 1, 1
    np.testing.assert_array_equal(out["confusion_matrix"], expected)
    assert out["num_examples"] == 8 and out["num_classes"] == 4 and out["num_templates"] == 3


def test_permuting_classes_permutes_confusion_matrix():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 40)
    queries = make_queries(labels, noise=0.7, seed=2)  # noisy: off-diagonal entries appear
    embed_texts, _ = axis_embedder()
    base = zeroshot.zeroshot_metrics(
        queries,
        labels,
        zeroshot.embed_prompts(CLASSES, TEMPLATES, embed_texts),
        class_names=CLASSES,
        templates=TEMPLATES,
    )
    perm = np.array([2, 0, 3, 1])  # new class i is old class perm[i]
    names = tuple(CLASSES[p] for p in perm)
    new_labels = np.argsort(perm)[labels]
    permuted = zeroshot.zeroshot_metrics(
        queries,
        new_labels,
        zeroshot.embed_prompts(names, TEMPLATES, embed_texts),
        class_names=names,
        templates=TEMPLATES,
    )
    old = np.array(base["confusion_matrix"])
    assert np.array(old).trace() < len(labels)
    np.testing.assert_array_equal(permuted["confusion_matrix"], old[np.ix_(perm, perm)])
    assert permuted["top1"] == base["top1"]
    assert permuted["per_class_accuracy"] == base["per_class_accuracy"]


def test_ties_go_to_the_lower_class_index():
    prompts = np.stack([np.eye(2)[[0]], np.eye(2)[[0]], np.eye(2)[[1]]])  # classes 0, 1 equal
    out = zeroshot.zeroshot_metrics(
        np.array([[1.0, 0.0], [1.0, 0.0]]),
        np.array([0, 1]),
        prompts,
        class_names=("a", "b", "c"),
        templates=("{}",),
        ks=(1, 2),
    )
    assert out["top1"] == 0.5 and out["top2"] == 1.0
    assert out["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert out["per_class_accuracy"]["c"] is None  # no examples of class c


def test_per_template_accuracy_and_spread():
    labels = np.array([0, 1, 2, 3, 0, 0])
    embed_texts, _ = axis_embedder(bad_template="{}")
    prompts = zeroshot.embed_prompts(CLASSES, TEMPLATES, embed_texts)
    out = zeroshot.zeroshot_metrics(
        make_queries(labels), labels, prompts, class_names=CLASSES, templates=TEMPLATES
    )
    # The bad template's classifier ties on every class -> always predicts class 0.
    assert out["per_template_accuracy"] == {
        "a photo of a {}.": 1.0,
        "a drawing of a {}.": 1.0,
        "{}": 0.5,
    }
    spread = out["template_spread"]
    assert spread["min"] == 0.5 and spread["max"] == 1.0
    assert spread["std"] == pytest.approx(np.std([1.0, 1.0, 0.5]))
    assert spread["mean"] == pytest.approx(2.5 / 3)
    assert spread["worst_template"] == "{}"
    assert out["top1"] == 1.0  # the ensemble still works: two good templates dominate


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, 4]), r"task 'shape': label 4 is outside \[0, 4\)"),
        (np.array([0.0, 1.0]), "labels must be integers"),
        (np.array([0, 1, 2]), r"labels have shape \(3,\), expected \(2,\)"),
    ],
)
def test_zeroshot_rejects_bad_labels(labels, match):
    prompts = zeroshot.embed_prompts(CLASSES, TEMPLATES, axis_embedder()[0])
    with pytest.raises(ValueError, match=match):
        zeroshot.zeroshot_metrics(
            make_queries(np.array([0, 1])),
            labels,
            prompts,
            class_names=CLASSES,
            templates=TEMPLATES,
            task="shape",
        )


def test_zeroshot_rejects_dim_mismatch_and_bad_embedder():
    prompts = zeroshot.embed_prompts(CLASSES, TEMPLATES, axis_embedder()[0])
    with pytest.raises(ValueError, match="query embeddings have dim 3 but prompt"):
        zeroshot.zeroshot_metrics(
            np.ones((2, 3)), np.array([0, 1]), prompts, class_names=CLASSES, templates=TEMPLATES
        )
    with pytest.raises(ValueError, match=r"embed_texts returned shape \(1, 6\) for 12 texts"):
        zeroshot.embed_prompts(CLASSES, TEMPLATES, lambda texts: np.ones((1, 6)))


# --- retrieval -------------------------------------------------------------------------


def test_retrieval_hand_computed():
    queries = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    out = retrieval.retrieval_metrics(
        queries, gallery, ks=(1, 2, 3), query_name="text", gallery_name="image"
    )
    # text->image ranks: q0 -> g0 first (0); q1 -> g0 beats g1 (1); q2: g1 (1.0) then g0 and
    # g2 tie at 0.0, g0 wins the tie (2). image->text ranks: 0, 1, 0.
    assert out["text_to_image"] == {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0}
    assert out["image_to_text"] == {"R@1": 2 / 3, "R@2": 1.0, "R@3": 1.0}
    assert out["num_queries"] == 3 and out["num_gallery"] == 3


def test_retrieval_several_captions_per_item():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    captions = np.array([[1.0, 0.2], [0.1, 1.0], [0.0, 1.0], [1.0, -0.3]])
    caption_to_image = np.array([0, 0, 1, 1])
    out = retrieval.retrieval_metrics(
        captions,
        images,
        query_ids=caption_to_image,
        gallery_ids=np.arange(2),
        ks=(1,),
        query_name="text",
        gallery_name="image",
    )
    # Captions 1 and 3 sit next to the other image; each image's best caption is its own.
    assert out["text_to_image"] == {"R@1": 0.5}
    assert out["image_to_text"] == {"R@1": 1.0}


def test_dedupe_gallery_keeps_first_row_per_item_in_order():
    rows = np.arange(10.0).reshape(5, 2)
    gallery, ids = retrieval.dedupe_gallery(rows, np.array([7, 7, 3, 7, 3]))
    np.testing.assert_array_equal(gallery, rows[[0, 2]])
    np.testing.assert_array_equal(ids, [7, 3])


def test_retrieval_matches_bruteforce_reference():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    out = retrieval.retrieval_metrics(q, g + 0.5 * q, ks=(1, 5, 10))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = (g + 0.5 * q) / np.linalg.norm(g + 0.5 * q, axis=1, keepdims=True)
    sims = qn @ gn.T
    for key, s in (("query_to_gallery", sims), ("gallery_to_query", sims.T)):
        ranks = (s > np.diag(s)[:, None]).sum(axis=1)  # continuous scores: no ties
        assert out[key] == {f"R@{k}": np.mean(ranks < k) for k in (1, 5, 10)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_ids": np.arange(3)}, "pass both query_ids and gallery_ids"),
        ({"query_ids": np.arange(2), "gallery_ids": np.arange(3)}, "ids shapes"),
    ],
)
def test_retrieval_rejects_bad_ids(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval.retrieval_metrics(np.ones((3, 2)), np.ones((3, 2)), **kwargs)


def test_retrieval_rejects_unpaired_sizes_and_dims():
    with pytest.raises(ValueError, match="without ids, retrieval needs one-to-one pairs"):
        retrieval.retrieval_metrics(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="image embeddings have dim 2 but text"):
        retrieval.retrieval_metrics(
            np.ones((3, 2)), np.ones((3, 4)), query_name="image", gallery_name="text"
        )
