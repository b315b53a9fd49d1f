"""Memory per process of data-parallel training, with and without FSDP, for a large preset on CPU processes.

    python benchmarks/fsdp_memory.py [--preset llama3.2-1b] [--nproc 2]

Runs one training step of the preset (context 64, batch 1, fp32 weights and AdamW state) in `--nproc`
gloo processes under torchrun, once with DDP (every process holds all parameters, gradients and
optimizer state) and once with `--fsdp` (each holds 1/nproc of them), and prints per process the
bytes of parameters + gradients + optimizer state it holds and its peak resident memory. llama3.2-1b
needs about 20 GB per process without FSDP: run it where there is room (2 x 20 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _local_bytes(t) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this process
    return local.numel() * local.element_size()


def worker(preset: str, fsdp: bool, n_layer: int | None) -> None:
    import dataclasses

    import torch

    from scratchllm.data.batches import TokenBatches
    from scratchllm.models import get_spec
    from scratchllm.train.presets import get_preset
    from scratchllm.train.distributed import init_distributed, shutdown
    from scratchllm.train.trainer import Trainer

    p = get_preset(preset)
    spec = get_spec(p.model_type)
    mcfg = dataclasses.replace(p.model, block_size=64, n_layer=n_layer or p.model.n_layer)
    tcfg = dataclasses.replace(p.train, batch_size=1, grad_accum=1, precision="fp32", device="cpu", fsdp=fsdp)
    tokens = torch.randint(mcfg.vocab_size, (4096,)).numpy()

    class Vocab:  # the trainer only asks how many bytes each id stands for
        vocab_size = mcfg.vocab_size

        def bytes_per_token(self):
            return [1] * self.vocab_size

    dist = init_distributed("cpu")
    torch.manual_seed(0)
    model = spec.build(mcfg)
    trainer = Trainer(model, tcfg, Vocab(), TokenBatches(tokens, tokens, 64, 0), "/tmp/fsdp-memory", meta={},
                      dist_info=dist, progress=False, shard_units=spec.shard_units)
    trainer.train_step()
    held = sum(_local_bytes(p) for p in trainer.model.parameters())
    held += sum(_local_bytes(p.grad) for p in trainer.model.parameters() if p.grad is not None)
    held += sum(_local_bytes(v) for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"rank": dist.rank, "held": held, "peak_rss": peak}), flush=True)
    del trainer, model
    shutdown(dist)


def main():
    if os.environ.get("FSDP_MEMORY_WORKER"):
        worker(os.environ["FSDP_MEMORY_WORKER"], os.environ.get("FSDP_MEMORY_SHARD") == "1",
               int(os.environ["FSDP_MEMORY_LAYERS"]) if os.environ.get("FSDP_MEMORY_LAYERS") else None)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama3.2-1b")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=None, help="fewer layers than the preset's (a quick check)")
    ap.add_argument("--only", choices=["ddp", "fsdp"], default=None, help="one of the two runs (where memory is short)")
    args = ap.parse_args()
    print(f"{args.preset}{f' cut to {args.n_layer} layers' if args.n_layer else ''}, {args.nproc} gloo processes, one step of batch 1 x 64, fp32 weights and AdamW state")
    for fsdp in [m == "fsdp" for m in ("ddp", "fsdp") if args.only in (None, m)]:
        env = {**os.environ, "FSDP_MEMORY_WORKER": args.preset, "FSDP_MEMORY_SHARD": "1" if fsdp else "0",
               "OMP_NUM_THREADS": "1", "FSDP_MEMORY_LAYERS": str(args.n_layer or "")}
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                              __file__], capture_output=True, text=True, env=env)
        rows = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or len(rows) != args.nproc:
            print(out.stderr[-2000:])
            sys.exit(f"error: the {'FSDP' if fsdp else 'DDP'} run failed")
        for r in sorted(rows, key=lambda r: r["rank"]):
            print(f"  {'FSDP' if fsdp else 'DDP ':<5} rank {r['rank']}: parameters + gradients + optimizer state "
                  f"{r['held'] / 2**30:6.2f} GiB, peak resident {r['peak_rss'] / 2**30:6.2f} GiB")


if __name__ == "__main__":
    main()
