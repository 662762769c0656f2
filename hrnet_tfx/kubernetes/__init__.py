"""Kubernetes manifests written by ``hrnet-tfx`` for ``kubectl apply -f``: TF Serving on the cluster
(:mod:`hrnet_tfx.kubernetes.serving`). Nothing here talks to a cluster."""
