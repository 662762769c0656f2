"""Serving: the TF Serving launcher, a protocol-compatible development server and the Python client.

Planned; see the project issues for its scope.
"""
