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
echo "# a bad request: 400 with the error shape"
curl -s "$url/encode" -H 'content-type: application/json' -d '[{"img_blob": "not base64!"}]'; echo
