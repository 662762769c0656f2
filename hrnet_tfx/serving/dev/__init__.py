"""The development server: TF Serving's gRPC and REST protocols for one model base, for development, the
tests and the demo when ``tensorflow_model_server`` is not installed. Deployments run TF Serving.

:mod:`.server` (:class:`DevServer`) runs :mod:`.grpc_service` and :mod:`.rest_server` (bodies:
:mod:`.rest_requests`) over :mod:`.core`, which keeps the latest version loaded (:mod:`.watcher`) as a
:mod:`.servable`; :mod:`.image_guard` checks image headers first. Nothing outside this package imports it
but the ``serve`` launcher and the CLI.
"""
