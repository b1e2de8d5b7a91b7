"""The same bits on another CPU? Trains the built-in CLIP a few steps under each ``cpu_kernels``
choice (params.yaml; ``qshift.runtime.CPU_KERNELS``) and prints what each ran and computed.

Each choice runs in a fresh interpreter, because the variables must be set before torch loads, as
every stage sets them. A run builds the configured model (params.yaml ``pretrain``, the seed's
initial weights), takes ``--steps`` optimisation steps of the pretraining recipe (its optimizer,
trimmed text, compact vocabulary) on a synthetic batch of ``--batch-size``, and prints ATen's
vectorised code path, the seconds per step, the final loss and a SHA-256 of the trained weights.
Run it on two machines with the same ``--threads`` and compare the ``avx2`` rows' digests: equal
digests are equal bits. On one machine, native and avx2 agree where native already is AVX2 (an
AVX2-only CPU) and differ on an AVX-512 one. It changes nothing on disk.

    python benchmarks/cpu_kernels.py [--params params.yaml] [--steps 5] [--batch-size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(kind: str, params: str, steps: int, batch_size: int, threads: int) -> dict:
    from qshift.runtime import set_cpu_kernels

    set_cpu_kernels(kind)  # before torch, as qshift.cli.load does in a stage
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from pretrain_speed import make_step, model_and_batch
    from qshift.config import load_params
    from qshift.models.train import build_optimizer
    from qshift.runtime import cpu_capability

    torch.set_num_threads(threads)
    cfg = load_params(params)
    pc = {**cfg["pretrain"], "batch_size": batch_size}
    cpu = torch.device("cpu")
    model, images, tokens = model_and_batch(pc, cpu, seed=cfg["seed"])
    step = make_step(model, build_optimizer(model, pc), images, tokens, True, cpu)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = (time.perf_counter() - t0) / steps
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return {"cpu_kernels": kind, "capability": cpu_capability(), "s_per_step": round(seconds, 4),
            "loss": float(loss), "sha256": digest.hexdigest()}


def main() -> None:
    from qshift.runtime import CPU_KERNELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=list(CPU_KERNELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.params, args.steps, args.batch_size, args.threads)))
        return
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNELS["avx2"]}  # each choice from a clean slate
    rows = []
    for kind in CPU_KERNELS:
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--params", args.params,
                              "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                              "--threads", str(args.threads)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"cpu_kernels {kind}: the run failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    same = len({r["sha256"] for r in rows}) == 1
    if args.json:
        print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
                          "rows": rows, "same_bits": same}))
        return
    print(f"{args.steps} pretraining steps of batch {args.batch_size} on {args.threads} threads, per cpu_kernels choice")
    print(f"{'cpu_kernels':<13}{'ATen':<9}{'s/step':>8}  {'final loss':<22}sha256 of the weights")
    for r in rows:
        print(f"{r['cpu_kernels']:<13}{r['capability'] or '-':<9}{r['s_per_step']:>8.4f}  {r['loss']!r:<22}{r['sha256']}")
    print("the choices compute " + ("the same bits here" if same else "different bits here (compare the avx2 "
                                                                        "digest with another machine's)"))


if __name__ == "__main__":
    main()
