"""Call the service with BentoML's client, which learns the routes from the server.

Usage: python examples/client_bentoml.py IMAGE [URL]
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import bentoml


def main(image_path: str, url: str = "http://localhost:3000") -> None:
    blob = base64.b64encode(Path(image_path).read_bytes()).decode()
    labels = ["a cat", "a dog", "a car"]
    with bentoml.SyncHTTPClient(url, timeout=600) as client:
        vectors = client.encode([{"text": "a cat"}, {"img_blob": blob}])
        print("encode:", len(vectors), "vectors of", len(vectors[0]))
        ranked = client.rank(
            queries=[{"img_blob": blob}], candidates=[{"text": label} for label in labels]
        )
        for label, p in zip(labels, ranked["probabilities"][0], strict=True):
            print(f"{label:>8}: {p:.3f}")
        scores = client.classify(image={"img_blob": blob}, label_set="pets")["scores"]
        print("pets:", ", ".join(f"{s['label']} ({s['probability']:.2f})" for s in scores))
        prompt = client.interrogate(image={"img_blob": blob}, mode="fast")["prompt"]
        print("prompt:", prompt)


if __name__ == "__main__":
    main(*sys.argv[1:])
