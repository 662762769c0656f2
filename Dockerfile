# The hrnet-tfx container image: every Kubeflow Pipelines step (ExampleGen, Trainer, Evaluator, Pusher)
# and every MPIJob launcher/worker runs in it.
#
#   docker build -t REGISTRY/hrnet-tfx:0.1.0 . && docker push REGISTRY/hrnet-tfx:0.1.0
#
# Base: the TFX 1.16.0 image (Python 3.10, TFX and TensorFlow 2.16, CUDA + cuDNN from Google's deep
# learning base, and the entry point KubeflowV2DagRunner's steps call). On it: this package with the
# pinned set, Horovod 0.28.1 built with NCCL (GPU allreduce), Gloo and Open MPI, and sshd for MPIJob
# workers (mpi-operator v2 starts ranks over ssh).
ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0
FROM ${TFX_IMAGE}

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# Build tools for Horovod, NCCL headers, Open MPI for mpirun, ssh for MPIJob.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
      openmpi-bin libopenmpi-dev openssh-client openssh-server \
 && (dpkg -s libnccl-dev >/dev/null 2>&1 || apt-get install -y --no-install-recommends libnccl2 libnccl-dev) \
 && rm -rf /var/lib/apt/lists/*

# mpi-operator mounts the ssh keys from a Secret: no host-key prompts, no known_hosts writes, no
# permission checks on the mounted files.
RUN mkdir -p /var/run/sshd \
 && sed -i 's/[ #]\(.*StrictHostKeyChecking \).*/ \1no/g' /etc/ssh/ssh_config \
 && echo "    UserKnownHostsFile /dev/null" >> /etc/ssh/ssh_config \
 && sed -i 's/#\(StrictModes \).*/\1no/g' /etc/ssh/sshd_config

WORKDIR /opt/hrnet-tfx
COPY requirements/constraints.txt requirements/constraints.txt
COPY setup.py README.md ./
COPY hrnet_tfx hrnet_tfx
RUN python -m pip install --no-cache-dir -c requirements/constraints.txt ".[kfp]"

# Horovod with NCCL for GPU allreduce (Gloo and MPI as controllers); fail the build if TensorFlow or
# NCCL support is missing.
# (The -include flags let gcc >= 13 compile 0.28.1; they change nothing for older compilers.)
RUN HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 CXXFLAGS="-include stdexcept -include string" \
    python -m pip install --no-cache-dir --no-build-isolation -c requirements/constraints.txt horovod==0.28.1 \
 && horovodrun --check-build | tee /tmp/horovod-build.txt \
 && grep -q "\[X\] TensorFlow" /tmp/horovod-build.txt && grep -q "\[X\] NCCL" /tmp/horovod-build.txt

# TFX sets no environment in its containers: what the steps need is baked in here.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    NCCL_DEBUG=WARN \
    PYTHONUNBUFFERED=1
