"""Kubernetes manifests written by ``hrnet-tfx`` for ``kubectl apply -f``: multi-node Horovod training as a
Kubeflow MPIJob (:mod:`hrnet_tfx.kubernetes.mpijob`) and TF Serving on the cluster
(:mod:`hrnet_tfx.kubernetes.serving`), both made of the pieces in :mod:`hrnet_tfx.kubernetes.objects`.
Nothing here talks to a cluster."""
