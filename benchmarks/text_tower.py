"""Text tower in process: 77-token padding vs trimmed padding vs a shared prefix.

Full-size ViT-B-32 with random weights (open_clip's ``create_model('ViT-B-32')``, no
pretrained tag; speed does not depend on weight values), fp32 on CPU, through the service's
own :class:`clip_service.models.backends.open_clip_backend.OpenClipModel`:

* label-like texts (clip-interrogator flavors) per second, every text padded to the 77-token
  context (open_clip's ``encode_text``) vs padded to the batch's longest (the default);
* one chain step of clip-interrogator's best mode: candidates ``f"{prompt}, {flavor}"``
  sharing a ~30-token prompt, encoded plainly (trimmed) vs with the prefix run once.

    python benchmarks/text_tower.py [--labels 256] [--candidates 2048] [--repeat 2]

Each figure is the best of ``--repeat`` timed runs after one warm-up; about 2 minutes on
2 CPU cores with the defaults.
"""

from __future__ import annotations

import numpy as np
import torch
from harness import Scenario, best_of, table

from clip_service.interrogation.labels import read_label_tables
from clip_service.models.backends.open_clip_backend import OpenClipModel
from clip_service.models.image_runtime import min_cosine
from clip_service.models.specs import ClipSpec

CAPTION = "a painting of a lighthouse on a rocky coast at sunset with seagulls"


def main() -> None:
    scenario = Scenario("text_tower", __doc__, serves=False)
    scenario.arg("--labels", type=int, default=256)
    scenario.arg("--candidates", type=int, default=2048)
    scenario.arg("--repeat", type=int, default=2)
    args = scenario.parse()

    spec = ClipSpec("ViT-B-32", "open_clip", "ViT-B-32")  # random weights, nothing downloaded
    model = OpenClipModel(spec, torch.device("cpu"), torch.float32)
    flavors = list(read_label_tables()["flavors"].labels)
    rng = np.random.default_rng(0)
    labels = [flavors[i] for i in rng.choice(len(flavors), args.labels, replace=False)]
    prompt = ", ".join([CAPTION, *flavors[100:106]])  # 30 tokens after the start token
    candidates = [f"{prompt}, {flavors[i]}" for i in rng.choice(len(flavors), args.candidates)]

    def full_context(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return model.model.encode_text(model.tokenizer(texts)).numpy()

    label_tokens = np.mean(model.count_tokens(labels))
    prefix_tokens = model.count_tokens([prompt])[0] - 1  # without its end token
    label_case = f"{args.labels} labels (~{label_tokens:.0f} tokens), one batch"
    chain_case = f"chain step: {args.candidates} candidates, {prefix_tokens}-token shared prefix"
    padded_s, padded = best_of(lambda: full_context(labels), args.repeat)
    trimmed_s, trimmed = best_of(lambda: model.encode_texts(labels), args.repeat)
    plain_s, plain = best_of(lambda: model.encode_texts(candidates), args.repeat)
    shared_s, shared = best_of(lambda: model.encode_texts_sharing_prefix(candidates), args.repeat)
    rows = [
        (label_case, "77-token padding", padded_s, args.labels, 1.0, "reference"),
        (label_case, "padded to the longest", trimmed_s, args.labels, padded_s / trimmed_s,
         f"{min_cosine(trimmed, padded):.7f}"),
        (chain_case, "plain (padded to the longest)", plain_s, args.candidates, 1.0, "reference"),
        (chain_case, "prefix shared", shared_s, args.candidates, plain_s / shared_s,
         f"{min_cosine(shared, plain):.7f}"),
    ]  # fmt: skip
    lines = {
        "model": "ViT-B-32 (open_clip, random weights), fp32, CPU",
        "threads": str(torch.get_num_threads()),
        "timing": f"best of {args.repeat} runs after one warm-up",
    }
    head = ["case", "path", "s", "texts/s", "speed-up", "min cosine"]
    cells = [(c, p, f"{s:.2f}", f"{n / s:.1f}", f"{x:.1f}x", cos) for c, p, s, n, x, cos in rows]
    scenario.write("Text tower: padding and prefix sharing", lines, table(head, cells))


if __name__ == "__main__":
    main()
