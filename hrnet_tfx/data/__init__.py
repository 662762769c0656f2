"""Data: ImageNet, image folders or inception TFRecords to sharded tf.Example TFRecords, and the tf.data input.

Conversion (``hrnet-tfx data convert``, the ``ImageExampleGen`` component):

* :mod:`~hrnet_tfx.data.options`: the conversion's settings, defaults and accepted choices;
* :mod:`~hrnet_tfx.data.sources`: input discovery and the input fingerprint;
* :mod:`~hrnet_tfx.data.storage`: reading inputs (and writing the sample) on any file system, read-ahead;
* :mod:`~hrnet_tfx.data.images`: per-image checks and fixes; :mod:`~hrnet_tfx.data.records`: tf.Example
  building, and the TFRecord framing (writing, bounded reading, counting from length headers, importing);
* :mod:`~hrnet_tfx.data.convert`: the Beam conversion (plan, run, collect, publish);
* :mod:`~hrnet_tfx.data.layout`, :mod:`~hrnet_tfx.data.features`, :mod:`~hrnet_tfx.data.labels`: output
  names, feature keys, class tables and label files;
* :mod:`~hrnet_tfx.data.progress`: live rates and ETA of a running conversion;
* :mod:`~hrnet_tfx.data.sample`: a small synthetic ImageNet-layout dataset.

Training and evaluation input: :mod:`~hrnet_tfx.data.input` and :mod:`~hrnet_tfx.data.preprocessing`;
:mod:`~hrnet_tfx.data.training_data` (a data directory's settings for the trainer) and
:mod:`~hrnet_tfx.data.counting` (record counts of many files, in parallel, through ``records``' reader).
"""
