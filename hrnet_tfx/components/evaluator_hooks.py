"""What TFX's Evaluator imports by ``module_path`` (see :func:`hrnet_tfx.components.evaluator.make_evaluator`).

TFX imports that module with ``importlib.reload`` on every Evaluator run in a process
(``tfx.utils.import_utils.import_func_from_module``). Reloading :mod:`hrnet_tfx.components.evaluator` itself
would replace its classes, so that ``except LabelRangeError`` in code that imported it earlier (a caller of
a local pipeline run, a test) no longer catches what the next run raises. Only this hook module is reloaded.
"""

from hrnet_tfx.components.evaluator import custom_extractors

__all__ = ["custom_extractors"]
