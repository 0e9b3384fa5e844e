"""Funnel: a three-stage recommender serving system.

This package is the library every process ships: `funnel.runtime` (what every process runs on),
the artifact format, features, candidate sources (`funnel.retrieval`), the policy, the Triton model
and client (`funnel.triton`), the online store (`funnel.live`); `funnel.v1` and `funnel.v2` are
generated from `protos/`. It imports no service and no tooling (`tests/test_layout.py`).
"""
