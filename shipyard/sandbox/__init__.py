"""The sandbox: where a model project's own code (its data, train and export entrypoints) runs.

A model project comes from whoever can push to its repository, so its code is untrusted. It
runs in a container (`container.py`) with no network, no secrets, no Docker socket, a
read-only source, a non-root user and CPU/memory/PID limits; `runner.py` is what runs inside,
and `stages.py` is what the release's tasks call: it reads back and checks what the container
wrote, so nothing the project returns is unpickled or trusted by the worker.
"""
