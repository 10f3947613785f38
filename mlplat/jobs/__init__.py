"""Notebook jobs: papermill runs with provenance, history and reruns."""
