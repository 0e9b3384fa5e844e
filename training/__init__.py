"""Offline side of Funnel: data sets, model training, evaluation and artifact export."""
