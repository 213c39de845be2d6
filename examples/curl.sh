#!/usr/bin/env bash
# Every route once, with curl. Usage: examples/curl.sh IMAGE [URL]
# Stops at the first route that does not answer 2xx (tests/test_examples.py runs it).
set -euo pipefail
image=${1:?usage: examples/curl.sh IMAGE [URL]}
url=${2:-http://localhost:3000}
blob=$(base64 -w0 "$image")
call() { curl -sS --fail-with-body "$@"; echo; }
json() { local route=$1; shift; call "$url$route" -H 'content-type: application/json' "$@"; }
short() { cut -c1-200; }  # long vectors cut for display (reads everything: no SIGPIPE)

echo "# health and model"
call "$url/livez"; call "$url/readyz"; call "$url/model"
echo "# metrics: how many Prometheus samples"
call "$url/metrics" | grep -c '^bentoml_'
echo "# encode"
json /encode -d '[{"text": "a photo of a cat"}, {"img_blob": "'"$blob"'"}]' | short
echo "# encode, multipart: each field is an item"
call "$url/encode" -F "text=a photo of a cat" -F "photo=@$image" | short
echo "# OpenAI embeddings (base URL $url/v1 for OpenAI clients)"
json /v1/embeddings -d '{"input": ["a photo of a cat", "data:image/png;base64,'"$blob"'"],
  "model": "clip", "encoding_format": "float"}' | short
echo "# rank"
json /rank -d '{"queries": [{"img_blob": "'"$blob"'"}],
  "candidates": [{"text": "a cat"}, {"text": "a dog"}, {"text": "a car"}]}'
echo "# vectorize"
call "$url/vectorize" --data-binary @"$image" | short
echo "# classify, own labels and a stored label set"
json /classify -d '{"image": {"img_blob": "'"$blob"'"}, "labels": ["cat", "dog"], "top_k": 2}'
json /classify -d '{"image": {"img_blob": "'"$blob"'"}, "label_set": "pets"}'
echo "# tag and wearable (multipart field file)"
call "$url/tag" -F "file=@$image" -H 'X-Request-ID: example-1'
call "$url/wearable" -F "file=@$image"
echo "# embeddings (multipart, your field names)"
call "$url/embeddings" -F "query=a photo of a cat" -F "photo=@$image" | short
echo "# caption"
json /caption -d '{"image": {"img_blob": "'"$blob"'"}}'
for mode in fast classic negative best; do
  echo "# interrogate ($mode)"
  json /interrogate -d '{"image": {"img_blob": "'"$blob"'"}, "mode": "'"$mode"'"}'
done
echo "# analyze"
json /analyze -d '{"image": {"img_blob": "'"$blob"'"}, "top_k": 3}'
echo "# extract_text"
call "$url/extract_text" --data-binary @"$image"
echo "# demo page"
call -L "$url/ui" | grep -i '<title>'
echo "# a bad request: 400 with the error shape"
curl -sS "$url/encode" -H 'content-type: application/json' -d '[{"img_blob": "not base64!"}]'
echo
