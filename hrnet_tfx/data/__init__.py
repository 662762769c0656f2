"""Data: ImageNet and image-folder conversion to TFRecords and the tf.data training and evaluation input.

Planned; see the project issues for its scope.
"""
