"""Kubernetes manifests read as the Kubernetes client's own typed objects, for the manifest tests."""

from __future__ import annotations

import json

from kubernetes import client


def typed(document: dict):
    """``document`` as the Kubernetes client's object of its kind, after checking that nothing was lost (an unknown
    or misspelled field would be)."""
    api = client.ApiClient()
    obj = api.deserialize(json.dumps(document), f"V1{document['kind']}", "application/json")
    assert api.sanitize_for_serialization(obj) == document, f"fields the {document['kind']} schema lacks"
    return obj
