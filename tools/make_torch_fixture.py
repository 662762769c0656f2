"""Writes the PyTorch reference fixture for the weight-import tests (run OUTSIDE the project venv).

Needs a Python with torch, timm and safetensors. torch must never enter the project venv: on Python 3.10
(the project's) pip picks a multi-GB CUDA build of torch, and the project reads PyTorch weights without
it. A Python 3.11 venv gets the CPU wheels, for example::

    python3.11 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm safetensors numpy pyyaml
    /tmp/torchvenv/bin/python tools/make_torch_fixture.py --out tests/fixtures/timm_tiny

It builds timm's ``HighResolutionNet`` from ``hrnet_tfx/configs/tiny.yaml``. timm hard-codes the
classification head's widths (32..256 planes, 2048 features), so the head modules are rebuilt at the
config's widths with timm's own ``_make_layer`` and plain torch layers under the same names; the
forward pass that produces the expected logits is timm's unmodified code. Every parameter and every
BatchNorm statistic is random, so a wrong transpose, a swapped mean/variance or a missing layer shows.

Outputs: ``state_dict.safetensors`` (timm key names), ``official.pth`` (the official training
checkpoint layout: ``{"state_dict": {"module." + key: ...}}``, zip format), ``legacy.pth`` (the same in
torch's pre-1.6 format, like the 2019 official weights), ``inputs.npy`` (NCHW float32) and
``logits.npy``. ``--variant NAME`` instead exports a full registered timm variant with random weights
(not committed; for checking a full-size model locally with HRNET_TORCH_FIXTURE=DIR pytest).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from timm.models import hrnet as timm_hrnet
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timm_cfg(cfg: dict) -> dict:
    """Our config (hrnet_tfx/configs/*.yaml) -> timm's cfg dict."""
    if cfg["stem_channels"][1] != 64:
        raise SystemExit("timm's stem always ends in 64 channels")
    out = {"stem_width": cfg["stem_channels"][0]}
    for k, stage in enumerate(cfg["stages"], start=1):
        out[f"stage{k}"] = dict(
            num_modules=stage["num_modules"],
            num_branches=len(stage["num_channels"]),
            block_type=stage["block"],
            num_blocks=tuple(stage["num_blocks"]),
            num_channels=tuple(stage["num_channels"]),
            fuse_method="SUM",
        )
    return out


def resize_head(model, cfg: dict, num_classes: int) -> None:
    """Rebuilds the head modules at the config's widths under timm's module names."""
    head, feats = cfg["head_channels"], cfg["num_features"]
    pre = [c * (4 if cfg["stages"][-1]["block"] == "BOTTLENECK" else 1) for c in cfg["stages"][-1]["num_channels"]]
    Bottleneck = timm_hrnet.Bottleneck
    model.incre_modules = nn.ModuleList(
        [model._make_layer(Bottleneck, c, planes, 1, stride=1) for c, planes in zip(pre, head)]
    )
    bias = cfg.get("head_conv_bias", True)
    model.downsamp_modules = nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(4 * a, 4 * b, 3, 2, 1, bias=bias), nn.BatchNorm2d(4 * b, momentum=0.1), nn.ReLU())
            for a, b in zip(head[:-1], head[1:])
        ]
    )
    model.final_layer = nn.Sequential(
        nn.Conv2d(4 * head[-1], feats, 1, 1, 0, bias=bias), nn.BatchNorm2d(feats, momentum=0.1), nn.ReLU()
    )
    model.num_features = feats
    model.classifier = nn.Linear(feats, num_classes)


def randomize(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", ".1.weight")) and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=gen) * 1.0 + 0.5)  # BN gamma
            else:
                scale = (2.0 / max(1, t[0].numel())) ** 0.5 if t.ndim > 1 else 0.2
                t.copy_(torch.randn(t.shape, generator=gen) * scale)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=os.path.join(ROOT, "hrnet_tfx", "configs", "tiny.yaml"))
    p.add_argument("--variant", help="a timm hrnet variant at full size instead of the tiny config")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    if args.variant:
        model = timm_hrnet.HighResolutionNet(dict(timm_hrnet.cfg_cls[args.variant]), num_classes=args.num_classes)
    else:
        with open(args.config, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        model = timm_hrnet.HighResolutionNet(timm_cfg(cfg), num_classes=args.num_classes)
        resize_head(model, cfg, args.num_classes)
    randomize(model, args.seed)
    model.eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)

    os.makedirs(args.out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "state_dict.safetensors"))
    np.save(os.path.join(args.out, "inputs.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(args.out, "logits.npy"), logits.numpy().astype(np.float32))
    if not args.variant:
        wrapped = {"epoch": 1, "state_dict": {"module." + k: v for k, v in state.items()}}
        torch.save(wrapped, os.path.join(args.out, "official.pth"))
        torch.save(state, os.path.join(args.out, "legacy.pth"), _use_new_zipfile_serialization=False)
    print(f"wrote {args.out}: {sum(v.numel() for v in state.values())} values, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
