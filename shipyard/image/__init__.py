"""The release image: build context and Dockerfile, deterministic build, smoke test, push."""
