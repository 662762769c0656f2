"""Serving: what every deployment needs (the SavedModel contract, warm-up records, TF Serving's launcher, a
client); the development server that stands in for TF Serving in tests and the demo is :mod:`.dev`.

Modules (import the one you need; none is imported here, so ``import hrnet_tfx.serving`` stays cheap):

* :mod:`~hrnet_tfx.serving.export` -- the SavedModel and its signatures: the serving contract, and the one
  owner of the signature names and their input and output keys;
* :mod:`~hrnet_tfx.serving.warmup` -- ``assets.extra/tf_serving_warmup_requests`` (the Pusher writes it);
* :mod:`~hrnet_tfx.serving.images` -- the one reader of request image files (local or bucket, size-bounded)
  for the client and the warm-up writer;
* :mod:`~hrnet_tfx.serving.model_base` -- ``<base>/<model_name>/<version>/`` discovery;
* :mod:`~hrnet_tfx.serving.names` -- the one rule for served model names;
* :mod:`~hrnet_tfx.serving.server` -- ``serve()``: ``tensorflow_model_server`` when installed, else the
  development server; :mod:`~hrnet_tfx.serving.batching` -- TF Serving's batching parameters;
* :mod:`~hrnet_tfx.serving.client` -- ``Client(host_port, rest=False)``: ``predict_images``,
  ``classify_examples``, ``predict``, ``metadata``, ``status``, over TF Serving's gRPC or REST API
  (:mod:`~hrnet_tfx.serving.tensors`, :mod:`~hrnet_tfx.serving.rest_json` convert its tensors; errors are
  :mod:`~hrnet_tfx.serving.errors`);
* :mod:`~hrnet_tfx.serving.dev` -- the development server (for development, tests and the demo; deployments
  run TF Serving).
"""
