"""Zero-shot evaluation for the training loop and `--mode=eval`.

    evaluator = ExperimentEvaluator(experiment)           # before step 1: config errors
    results = evaluator(state.params, frozen_params, step=step, workdir=workdir, writer=writer)

or, with any embedding functions and eval batches:

    evaluator = Evaluator(config.eval, dataset_info=info, modalities=("image", "text"))
    results = evaluator(eval_batches, embed_batch=embed_batch, embed_texts=embed_texts)
    writer.write(step, scalars(results))                  # metrics.jsonl, TensorBoard
    save_report(results, workdir, step=step)              # eval_results.json + PNG plots

`embed_batch(batch) -> {modality: [B, D]}` embeds every modality of a (sharded, padded)
eval batch, jitted once by the caller; `embed_texts(list[str]) -> [n, D]` embeds prompts
in the same space as the "text" entry of `embed_batch`. Both are passed in so evaluation
does not depend on which tower is frozen. Multi-host: every process calls the evaluator
with the same global batches; embeddings are all-gathered, so all processes compute the
same results, and only process 0 writes files. See docs/evaluation.md.
"""

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from cwcl_jax.eval import gather, plots, results, retrieval, two_tower_embed, zeroshot
from cwcl_jax.eval.results import scalars, summary_table
from cwcl_jax.eval.tasks import (
    RetrievalTask,
    Task,
    ZeroShotTask,
    resolve_tasks,
    retrieval_task,
    zeroshot_task,
)

__all__ = [
    "Evaluator",
    "ExperimentEvaluator",
    "evaluate",
    "get_eval_config",
    "retrieval_task",
    "save_report",
    "scalars",
    "summary_table",
    "zeroshot_task",
]

EmbedBatch = Callable[[dict[str, Any]], Mapping[str, Any]]
EmbedTexts = Callable[[list[str]], np.ndarray] | None
RESULTS_FILE = "eval_results.json"


def get_eval_config() -> ml_collections.ConfigDict:
    """Defaults of the `config.eval` section; experiment configs add named tasks."""
    config = ml_collections.ConfigDict()
    config.batch_size = 256  # global eval batch; the last one is padded (valid mask)
    config.text_batch_size = 256  # prompts per embed_texts call
    config.valid_key = "valid"  # batch entry marking real rows (False = padding)
    config.tasks = ml_collections.ConfigDict()  # name -> zeroshot_task(...) | retrieval_task(...)
    return config


class Evaluator:
    """Resolved eval tasks (files loaded, config checked) ready to run on eval batches."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        dataset_info: Any = None,
        modalities: Iterable[str] | None = None,
    ):
        """config: the `config.eval` section; dataset_info: the eval dataset's tfds
        DatasetInfo (class names from ClassLabel features); modalities: those the eval
        batches carry (checked against the tasks)."""
        self.tasks = resolve_tasks(config.tasks, dataset_info=dataset_info, modalities=modalities)
        self.text_batch_size = int(config.text_batch_size)
        self.valid_key = str(config.valid_key)

    def __call__(
        self, batches: Iterable[dict[str, Any]], *, embed_batch: EmbedBatch, embed_texts: EmbedTexts
    ) -> dict[str, Any]:
        return evaluate(
            self.tasks,
            batches,
            embed_batch=embed_batch,
            embed_texts=embed_texts,
            text_batch_size=self.text_batch_size,
            valid_key=self.valid_key,
        )


def evaluate(
    tasks: list[Task],
    batches: Iterable[dict[str, Any]],
    *,
    embed_batch: EmbedBatch,
    embed_texts: EmbedTexts,
    text_batch_size: int = 256,
    valid_key: str = "valid",
) -> dict[str, Any]:
    """Embeds all eval batches once, then scores every task. Returns {"tasks": {name: ...}}."""
    if embed_texts is None and any(isinstance(t, ZeroShotTask) for t in tasks):
        raise ValueError("zero-shot tasks need embed_texts (a text tower); got None")
    collected = gather.collect(
        lambda batch: _needed_embeddings(tasks, embed_batch(batch)),
        batches,
        extra=lambda batch: _needed_labels(tasks, batch),
        valid_key=valid_key,
    )
    embeddings, labels = collected["outputs"], collected["extra"]
    out = {}
    for task in tasks:
        if isinstance(task, ZeroShotTask):
            out[task.name] = _run_zeroshot(task, embeddings, labels, embed_texts, text_batch_size)
        else:
            out[task.name] = _run_retrieval(task, embeddings, labels)
    return {"tasks": out}


class ExperimentEvaluator:
    """Evaluation of a trainer `Experiment`: the eval split of `config.data` through the
    run's own towers, with `config.eval`'s tasks. Build it before training so a bad eval
    config fails before step 1; call it with the current params at every eval.
    """

    def __init__(self, experiment: Any):
        """experiment: `cwcl_jax.experiment.Experiment` (config, mesh, parts, processor)."""
        import tensorflow_datasets as tfds  # deferred: heavy, and pure evaluation needs none

        from cwcl_jax import data  # noqa: F401  (registers this project's TFDS builders)

        config = experiment.config
        if "eval" not in config:
            raise ValueError("config.eval is missing: add evaluate.get_eval_config() with tasks")
        self.experiment = experiment
        parts = experiment.parts
        self.modalities = (parts.trainable_key, parts.frozen_key)
        info = tfds.builder(config.data.name, data_dir=config.data.data_dir).info
        self.evaluator = Evaluator(config.eval, dataset_info=info, modalities=self.modalities)
        self.tokenizer = self.tokenize = None
        if "text" in self.modalities:
            self.tokenizer = _text_tokenizer(experiment)
            self.tokenize = two_tower_embed.hf_tokenize(self.tokenizer, config.data.max_text_length)

    def __call__(
        self,
        params: Any,
        frozen_params: Any,
        *,
        step: int,
        workdir: str | Path | None = None,
        writer: Any = None,
    ) -> dict[str, Any]:
        """Evaluates `params` (the TwoTower's) -> results; logs scalars to `writer` (a
        MetricsWriter) and writes the report into `workdir` when given."""
        from cwcl_jax.data.pipeline import make_pipeline  # deferred: TF and TFDS

        exp, config = self.experiment, self.experiment.config
        batches = make_pipeline(
            config.data,
            split=config.data.eval_split,
            global_batch_size=config.eval.batch_size,
            mesh=exp.mesh,
            seed=config.seed,
            tokenizer=self.tokenizer,
            train=False,
        )
        embed_batch, embed_texts = two_tower_embed.two_tower_embedders(
            exp.parts.model,
            {"params": params},
            exp.parts.frozen_module,
            frozen_params,
            trainable_modality=exp.parts.trainable_key,
            frozen_modality=exp.parts.frozen_key,
            tokenize=self.tokenize,
        )
        results = self.evaluator(batches, embed_batch=embed_batch, embed_texts=embed_texts)
        if writer is not None:
            writer.write(step, scalars(results))
        if workdir is not None:
            save_report(results, workdir, step=step)
        return results


def _text_tokenizer(experiment: Any) -> Any:
    """The tokenizer training used for text: the frozen text tower's, or data.tokenizer."""
    if experiment.parts.frozen_key == "text":
        return experiment.frozen_processor
    name = experiment.config.data.tokenizer
    if not name:
        raise ValueError("config.data.tokenizer: a trainable text tower needs a tokenizer dir")
    import transformers  # deferred: heavy

    return transformers.AutoTokenizer.from_pretrained(name)


def save_report(
    eval_results: dict[str, Any],
    workdir: str | Path,
    *,
    step: int,
    metrics_file: str = "metrics.jsonl",
) -> list[Path]:
    """Writes eval_results.json and PNG plots into `workdir` (process 0 only).

    Plots: per zero-shot task, per-class accuracy bars and a confusion matrix; training
    curves when `workdir/metrics_file` exists. Returns the written paths ([] elsewhere).
    """
    if jax.process_index() != 0:
        return []
    workdir = Path(workdir)
    written = [results.write_json(workdir / RESULTS_FILE, {"step": int(step), **eval_results})]
    plot_dir = workdir / "plots"
    for name, task in eval_results["tasks"].items():
        if task["kind"] == "zeroshot":
            title = f"{name} (step {step})"
            written += [
                plots.plot_per_class_accuracy(task, plot_dir / f"{name}_per_class.png", title),
                plots.plot_confusion_matrix(task, plot_dir / f"{name}_confusion.png", title),
            ]
    curves = workdir / metrics_file
    if curves.is_file():
        written.append(plots.plot_training_curves(curves, plot_dir / "training_curves.png"))
    return written


def _needed_embeddings(tasks: list[Task], embedded: Mapping[str, Any]) -> dict[str, Any]:
    needed = set()
    for task in tasks:
        needed.add(task.query_modality)
        if isinstance(task, RetrievalTask):
            needed.add(task.gallery_modality)
    missing = needed - set(embedded)
    if missing:
        raise ValueError(
            f"embed_batch returned {sorted(embedded)}, but the eval tasks need {sorted(missing)}"
        )
    return {modality: embedded[modality] for modality in needed}


def _needed_labels(tasks: list[Task], batch: dict[str, Any]) -> dict[str, Any]:
    keys = {t.label_key for t in tasks if isinstance(t, ZeroShotTask)}
    keys |= {t.item_id_key for t in tasks if isinstance(t, RetrievalTask) and t.item_id_key}
    available = batch.get("labels", {})
    missing = keys - set(available)
    if missing:
        raise ValueError(
            f"eval batch labels {sorted(available)} lack {sorted(missing)} (needed by eval tasks)"
        )
    return {key: available[key] for key in keys}


def _run_zeroshot(task: ZeroShotTask, embeddings, labels, embed_texts, text_batch_size) -> dict:
    prompts = zeroshot.embed_prompts(
        task.class_names, task.templates, embed_texts, batch_size=text_batch_size
    )
    metrics = zeroshot.zeroshot_metrics(
        embeddings[task.query_modality],
        labels[task.label_key],
        prompts,
        class_names=task.class_names,
        templates=task.templates,
        ks=task.ks,
        per_template=task.per_template,
        task=task.name,
    )
    return {"kind": "zeroshot", "query_modality": task.query_modality, **metrics}


def _run_retrieval(task: RetrievalTask, embeddings, labels) -> dict:
    queries = embeddings[task.query_modality]
    gallery = embeddings[task.gallery_modality]
    query_ids = gallery_ids = None
    if task.item_id_key:
        # Rows are (item, caption) pairs: the gallery side keeps one row per item id.
        query_ids = labels[task.item_id_key]
        gallery, gallery_ids = retrieval.dedupe_gallery(gallery, query_ids)
    metrics = retrieval.retrieval_metrics(
        queries,
        gallery,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        ks=task.ks,
        query_name=task.query_modality,
        gallery_name=task.gallery_modality,
    )
    return {"kind": "retrieval", **metrics}
