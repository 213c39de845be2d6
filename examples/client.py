"""Call the service from Python: BentoML's client and plain HTTP.

Usage: python examples/client.py IMAGE [URL]
"""

from __future__ import annotations

import base64
import sys

import bentoml
import httpx
import numpy as np


def main(image_path: str, url: str = "http://localhost:3000") -> None:
    with open(image_path, "rb") as image:
        blob = base64.b64encode(image.read()).decode()
    labels = ["a cat", "a dog", "a car"]

    # BentoML's client knows the routes from the server's OpenAPI document.
    with bentoml.SyncHTTPClient(url) as client:
        ranked = client.rank(
            queries=[{"img_blob": blob}], candidates=[{"text": label} for label in labels]
        )
        for label, p in zip(labels, ranked["probabilities"][0], strict=True):
            print(f"{label:>8}: {p:.3f}")

    # Plain HTTP works just as well.
    vectors = np.array(
        httpx.post(f"{url}/encode", json=[{"text": "a cat"}, {"img_blob": blob}]).json()
    )
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    print("cosine(text, image) =", float(normed[0] @ normed[1]))


if __name__ == "__main__":
    main(*sys.argv[1:])
