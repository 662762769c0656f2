"""Distribution ``hrnet-tfx``: HRNet image classifiers trained and served with TFX.

Install with the pinned set: ``pip install -c requirements/constraints.txt -e .[dev]`` (the setup
scripts in scripts/ do this, then build Horovod from source).
"""

from setuptools import find_packages, setup

setup(
    name="hrnet-tfx",
    version="0.1.0",
    description="HRNet image classifiers: TFX pipeline, Horovod training, TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["hrnet_tfx", "hrnet_tfx.*"]),
    package_data={"hrnet_tfx": ["configs/*.yaml"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow>=2.16,<2.17",
        "tf_keras>=2.16,<2.17",
        "dill",  # tfx_bsl imports it; newer apache-beam no longer pulls it in
        "safetensors",
        "numpy<2",
        "click>=8",
        "tqdm",
        "pyyaml",
        "Pillow",
        "scipy",  # reads the ImageNet devkit's meta.mat
        "tensorflow-serving-api>=2.16,<2.17",
        "grpcio",
        "requests",
        "tornado>=6.5",  # the development server's REST endpoint
        "google-crc32c",  # TFRecord framing in the converter (data/records.py imports it directly)
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "jsonschema", "kubernetes"],
        # KubeflowV2DagRunner (TFX's kfp extra). kfp >= 2.6 needs protobuf >= 4.21, which
        # tensorflow-metadata 1.16 on Python 3.10 refuses (< 4.21).
        "kfp": ["kfp>=2,<2.6", "kfp-pipeline-spec>=0.2.2"],
    },
    entry_points={"console_scripts": ["hrnet-tfx=hrnet_tfx.cli:main"]},
)
