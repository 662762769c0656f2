"""TFX components: the Beam ImageNet ExampleGen, the Horovod Trainer and their executors.

Planned; see the project issues for its scope.
"""
