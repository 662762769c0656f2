"""timm side of ``bench_model.py --vs-timm``: runs in the other Python (the one with torch and timm).

Not a user script. Protocol, one JSON object per line: after start-up the worker prints
``{"ready": ...}`` (or ``{"error": ...}`` and exits); then for every request read from stdin,
``{"op": "infer" | "train", "steps": N, "bf16": bool, "frozen": bool}``, it runs N steps and prints
``{"seconds": ...}``. ``{"op": "quit"}`` or end of input stops it. Between requests it only blocks on
stdin, so it never competes with the Keras measurements for the CPU.

``frozen`` (inference only) runs the model as PyTorch's own inference-only form: ``torch.jit.trace``, then
``torch.jit.freeze`` (BN folded into the convolutions, weights as constants) and
``torch.jit.optimize_for_inference`` (oneDNN weight prepacking), built on first use; the bf16 one is the
model cast to bfloat16 (weights and input, as our folded bf16 export) rather than autocast.
"""

import argparse
import copy
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

    frozen = {}

    def infer_frozen(bf16):
        if bf16 not in frozen:
            dtype = torch.bfloat16 if bf16 else torch.float32
            net = copy.deepcopy(model).eval().to(dtype)
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(net, x.to(dtype))
                frozen[bf16] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                for _ in range(3):  # the profiling executor specializes on the first calls
                    frozen[bf16](x.to(dtype))
        with torch.no_grad():
            frozen[bf16](x.to(torch.bfloat16 if bf16 else torch.float32))

    steps = {"infer": infer, "train": train, "infer_frozen": infer_frozen}
    reply(ready=True, torch=torch.__version__, timm=timm.__version__,
          threads=torch.get_num_threads(), inter_threads=torch.get_num_interop_threads())
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        fn = steps["infer_frozen" if req.get("frozen") else req["op"]]
        start = time.perf_counter()
        for _ in range(req["steps"]):
            fn(req.get("bf16", False))
        reply(seconds=time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
