"""Replay evaluation of the served funnel: what each stage and policy rule group adds."""
