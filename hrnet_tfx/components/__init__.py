"""TFX components and pipeline helpers.

* :mod:`~hrnet_tfx.components.image_example_gen`: ``ImageExampleGen``, the Beam ImageNet ExampleGen;
* :mod:`~hrnet_tfx.components.trainer`: ``HorovodTrainer``;
* :mod:`~hrnet_tfx.components.evaluator`: ``eval_config`` and ``make_evaluator`` (the stock TFX Evaluator
  with top-1/top-5 bounds and a change threshold against the latest blessed model);
* :mod:`~hrnet_tfx.components.report`: ``EvaluationReport`` (report.md / report.html / report.json);
* :mod:`~hrnet_tfx.components.pusher`: ``HRNetPusher`` (blessed models only, staged with warm-up requests
  and label map, then renamed into ``<base>/<model_name>/<version>/``).
"""
