"""Pipeline assembly: create_pipeline(config) and the thin local and Kubeflow runners.

Planned; see the project issues for its scope.
"""
