"""The development server: TF Serving's gRPC and REST protocols for one model base, for development, the
tests and the demo when ``tensorflow_model_server`` is not installed. Deployments run TF Serving
(``hrnet-tfx serve`` does when it is on PATH; ``hrnet-tfx serving-manifests`` for Kubernetes).

* :mod:`~hrnet_tfx.serving.dev.server` -- :class:`DevServer`, :class:`DevServerOptions`, ``run_dev_server``;
* :mod:`~hrnet_tfx.serving.dev.core` -- the served model, shared by both protocols;
* :mod:`~hrnet_tfx.serving.dev.watcher` -- TF Serving's version policy (load the latest, retry, drain);
* :mod:`~hrnet_tfx.serving.dev.servable` -- one loaded version, run in a TF session as TF Serving runs it;
* :mod:`~hrnet_tfx.serving.dev.grpc_service` -- PredictionService and ModelService;
* :mod:`~hrnet_tfx.serving.dev.rest_server`, :mod:`~hrnet_tfx.serving.dev.rest_requests` -- REST on tornado;
* :mod:`~hrnet_tfx.serving.dev.image_guard` -- image header checks before the graph decodes anything.

It imports nothing from ``training/`` or the pipeline, and nothing outside this package imports it but the
``serve`` launcher and the CLI.
"""
