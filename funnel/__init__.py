"""Funnel: a three-stage recommender serving system.

`funnel.runtime` is the runtime every process shares; `funnel.v1` is generated from `protos/`.
"""
