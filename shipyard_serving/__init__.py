"""Shipyard's inference server: an ASGI app around ONNX Runtime.

Speaks the Open Inference Protocol (V2, as KServe and Triton do) and MLflow's scoring
contract, with API keys, limits, Prometheus metrics and adaptive micro-batching. It depends
on neither Prefect nor MLflow, so the release image carries only what serving needs.
"""

__version__ = "0.1.0"
