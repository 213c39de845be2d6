"""What tests, benchmarks and operators check the service with, outside the serving path:
random-weight models, test images, upstream references, the hostile corpus and the soaks."""
