"""What requests carry, decoded and guarded: images (every Pillow format), base64, URLs
(fetched without reaching private addresses), JSON nesting. Plain Python: no HTTP."""
