"""Deploying Funnel on Kubernetes: render the kustomize overlays, check them, apply them, watch them."""
