#!/usr/bin/env bash
# Every route once, with curl. Usage: examples/curl.sh IMAGE [URL]
set -euo pipefail
image=${1:?usage: examples/curl.sh IMAGE [URL]}
url=${2:-http://localhost:3000}
blob=$(base64 -w0 "$image")

echo "# model"; curl -s "$url/model"; echo
echo "# encode"
curl -s "$url/encode" -H 'content-type: application/json' \
  -d '[{"text": "a photo of a cat"}, {"img_blob": "'"$blob"'"}]' | head -c 200; echo
echo "# rank"
curl -s "$url/rank" -H 'content-type: application/json' -d '{
  "queries": [{"img_blob": "'"$blob"'"}],
  "candidates": [{"text": "a cat"}, {"text": "a dog"}, {"text": "a car"}]}'; echo
echo "# vectorize"
curl -s "$url/vectorize" --data-binary @"$image" | head -c 200; echo
echo "# caption"
curl -s "$url/caption" -H 'content-type: application/json' -d '{"image": {"img_blob": "'"$blob"'"}}'; echo
for mode in fast classic negative best; do
  echo "# interrogate ($mode)"
  curl -s "$url/interrogate" -H 'content-type: application/json' \
    -d '{"image": {"img_blob": "'"$blob"'"}, "mode": "'"$mode"'"}'; echo
done
echo "# analyze"
curl -s "$url/analyze" -H 'content-type: application/json' \
  -d '{"image": {"img_blob": "'"$blob"'"}, "top_k": 3}'; echo
echo "# extract_text"
curl -s "$url/extract_text" --data-binary @"$image"; echo
echo "# a bad request: 400 with the error shape"
curl -s "$url/encode" -H 'content-type: application/json' -d '[{"img_blob": "not base64!"}]'; echo
