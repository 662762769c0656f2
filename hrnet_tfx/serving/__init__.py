"""Serving: the SavedModel export, TF Serving's launcher, a protocol-compatible development server, a client.

Modules (import the one you need; none is imported here, so ``import hrnet_tfx.serving`` stays cheap):

* :mod:`~hrnet_tfx.serving.export` -- the SavedModel and its signatures (the serving contract);
* :mod:`~hrnet_tfx.serving.warmup` -- ``assets.extra/tf_serving_warmup_requests`` (the Pusher writes it);
* :mod:`~hrnet_tfx.serving.model_base` -- ``<base>/<model_name>/<version>/`` discovery and the version watcher;
* :mod:`~hrnet_tfx.serving.server` -- ``serve()``: ``tensorflow_model_server`` when installed, else
  :mod:`~hrnet_tfx.serving.dev_server`, which speaks TF Serving's gRPC
  (:mod:`~hrnet_tfx.serving.grpc_service`) and REST (:mod:`~hrnet_tfx.serving.rest_server`,
  :mod:`~hrnet_tfx.serving.rest_json`) protocols;
* :mod:`~hrnet_tfx.serving.client` -- ``Client(host_port, rest=False)``: ``predict_images``,
  ``classify_examples``, ``metadata``, ``status``;
* :mod:`~hrnet_tfx.serving.errors` -- status codes and the errors both sides raise.
"""
