"""The naive baseline: one request, one forward pass, in the seeds' Flask style.

The small services this bundle replaces were Flask apps that load a CLIP model at import
and run it on each request as it comes (Flask's threaded development server, no batching,
no separate decode stage). Same routes and bodies as ours for the benchmarked workloads:

* ``POST /vectorize``: raw image bytes -> ``{"vector": [...]}``;
* ``POST /encode``: a JSON list of ``{"text": ...}`` items -> a list of embeddings.

    python benchmarks/naive_server.py HF_CLIP_DIR --port 5000
"""

from __future__ import annotations

import argparse
import io

import torch
from flask import Flask, jsonify, request
from PIL import Image
from transformers import CLIPModel, CLIPProcessor


def create_app(model_dir: str) -> Flask:
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify({"ok": True})

    @app.post("/vectorize")
    def vectorize():
        image = Image.open(io.BytesIO(request.get_data())).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)
        return jsonify({"vector": features[0].tolist()})

    @app.post("/encode")
    def encode():
        texts = [item["text"] for item in request.get_json()]
        inputs = processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            features = model.get_text_features(**inputs)
        features = getattr(features, "pooler_output", features)
        return jsonify(features.tolist())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    create_app(args.model_dir).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
