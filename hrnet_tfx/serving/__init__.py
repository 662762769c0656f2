"""Serving: what every deployment needs, and the development server that stands in for TF Serving in tests
and the demo (:mod:`.dev`). Import the module you need (none is imported here, so this stays cheap):

* :mod:`.export` -- the SavedModel: the serving contract, the one owner of the signature names and keys;
* :mod:`.warmup` -- TF Serving's warm-up records (the Pusher writes them);
* :mod:`.images` -- the one reader of request image files (client and warm-up writer);
* :mod:`.model_base` -- ``<base>/<model_name>/<version>/`` discovery; :mod:`.names` -- served model names;
* :mod:`.server` -- ``serve()``: ``tensorflow_model_server`` when installed, else the development server;
  :mod:`.batching` -- TF Serving's batching parameters;
* :mod:`.client` -- ``Client``, over TF Serving's gRPC or REST API (:mod:`.tensors` and :mod:`.rest_json`
  convert its tensors; :mod:`.errors` are its errors);
* :mod:`.dev` -- the development server (for development, tests and the demo; deployments run TF Serving).
"""
