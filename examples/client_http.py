"""Call the service with plain HTTP (httpx): JSON, raw bytes and multipart.

Usage: python examples/client_http.py IMAGE [URL]
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx
import numpy as np


def main(image_path: str, url: str = "http://localhost:3000") -> None:
    data = Path(image_path).read_bytes()
    blob = base64.b64encode(data).decode()
    with httpx.Client(base_url=url, timeout=600) as client:
        # /encode returns raw model outputs: normalise before taking cosines.
        response = client.post("/encode", json=[{"text": "a cat"}, {"img_blob": blob}])
        vectors = np.array(response.raise_for_status().json())
        normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        print("cosine(text, image) =", round(float(normed[0] @ normed[1]), 4))

        # The OpenAI shape: unit vectors, images as data: URIs.
        body = {
            "input": ["a cat", f"data:image/png;base64,{blob}"],
            "model": "clip",
            "encoding_format": "float",
        }
        answer = client.post("/v1/embeddings", json=body).raise_for_status().json()
        print("v1/embeddings:", answer["model"], [len(d["embedding"]) for d in answer["data"]])

        vector = client.post("/vectorize", content=data).raise_for_status().json()["vector"]
        print("vectorize:", len(vector), "floats")

        tags = client.post("/tag", files={"file": (Path(image_path).name, data)})
        print("tags:", [t["label"] for t in tags.raise_for_status().json()["tags"]])

        bad = client.post("/encode", json=[{"img_blob": "not base64!"}])
        print("bad request:", bad.status_code, bad.json()["error"])


if __name__ == "__main__":
    main(*sys.argv[1:])
