"""timm side of ``bench_model.py --vs-timm``: runs in the other Python (the one with torch and timm).

Not a user script. Protocol, one JSON object per line: after start-up the worker prints
``{"ready": ...}`` (or ``{"error": ...}`` and exits); then for every request read from stdin,
``{"op": "infer" | "train", "steps": N, "bf16": bool}``, it runs N steps and prints
``{"seconds": ...}``. ``{"op": "quit"}`` or end of input stops it. Between requests it only blocks on
stdin, so it never competes with the Keras measurements for the CPU.
"""

import argparse
import json
import sys
import time

_OUT = sys.stdout
sys.stdout = sys.stderr  # anything torch/timm print must not corrupt the protocol


def reply(**msg):
    _OUT.write(json.dumps(msg) + "\n")
    _OUT.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--inter-threads", type=int, required=True)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    try:
        import torch
        import timm
    except ImportError as e:
        reply(error=f"cannot import torch/timm in {sys.executable}: {e}")
        return 1
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.inter_threads)
    torch.manual_seed(0)
    try:
        model = timm.create_model(args.model, pretrained=False, num_classes=1000)
    except Exception as e:  # unknown name, old timm, ...
        reply(error=f"timm.create_model({args.model!r}) failed: {e}")
        return 1
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).to(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def infer(bf16):
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x)

    def train(bf16):
        model.train()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = {"infer": infer, "train": train}
    reply(ready=True, torch=torch.__version__, timm=timm.__version__,
          threads=torch.get_num_threads(), inter_threads=torch.get_num_interop_threads())
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        fn = steps[req["op"]]
        start = time.perf_counter()
        for _ in range(req["steps"]):
            fn(req.get("bf16", False))
        reply(seconds=time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
