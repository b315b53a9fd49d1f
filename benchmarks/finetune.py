"""Fine-tuning speed and memory: ours vs peft + transformers, full and LoRA, on the same data, in one process.

The same base (our model, and transformers' LlamaForCausalLM made from its exported weights), the same
right-padded batches of the same conversations rendered by the model's chat template (data/chat_data.py),
AdamW in fp32, on the CPU. For each of ours-LoRA, peft-LoRA, ours-full, transformers-full it prints
tokens/s (real tokens, padding left out, after a warm-up step) and the peak resident memory the run added
(sampled every 5 ms), and the ratios ours / theirs. Before each run the memory the earlier ones freed is
handed back to the system (glibc's malloc_trim): otherwise a later run reuses it and seems to add less.

    python benchmarks/finetune.py                       # SmolLM2-135M-Instruct on the identity set
    python benchmarks/finetune.py --model runs/mine --data chat.jsonl --steps 5
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import threading
import time

import torch


class PeakRSS:
    """The most resident memory above the level at the start, sampled in a thread (psutil)."""

    def __enter__(self):
        import psutil

        self.process, self.peak, self.running = psutil.Process(os.getpid()), 0, True
        self.start = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def release_freed_memory() -> None:
    """Return the heap memory freed so far to the system, so that RSS measures what is in use (glibc keeps
    freed blocks for reuse: the first version of this benchmark, without this, showed a later run adding
    568 MiB for a full fine-tune whose AdamW state alone is 1 GB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figures may then favour the later runs
        pass


def run(step, batches, steps: int) -> tuple[float, float]:
    """(real tokens/s over `steps` steps after one warm-up step, peak added memory in MiB)."""
    release_freed_memory()
    with PeakRSS() as mem:
        step(batches[0])
        start = time.perf_counter()
        for batch in batches[1:steps + 1]:
            step(batch)
        seconds = time.perf_counter() - start
    return sum(b["real"] for b in batches[1:steps + 1]) / seconds, mem.peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="identity")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import peft
    import transformers

    from scratchllm import load_pretrained
    from scratchllm.data.chat_data import IGNORE, ChatBatches, DataConfig, load_conversations, make_examples
    from scratchllm.interop.hf import save_hf
    from scratchllm.interop.peft import peft_modules
    from scratchllm.layers.linear import LoRAConfig

    transformers.logging.set_verbosity_error()
    lm = load_pretrained(args.model)
    conversations = load_conversations(args.data, DataConfig(name="Nova", author="Orbital"))
    examples, _ = make_examples(conversations, lm.tokenizer, lm.chat_template, lm.template_tokens,
                                min(256, lm.model.config.block_size))
    source = ChatBatches(examples, examples[:1], seed=0)
    batches = []
    for _ in range(args.steps + 1):
        (b,) = source.draw_step(args.batch_size, 1)
        # each row is real up to its last scored target; after that, right padding
        ends = torch.where(b["targets"] != IGNORE, torch.arange(b["targets"].size(1)), -1).max(1).values + 1
        batches.append({**b, "real": int(ends.sum())})
    folder = tempfile.mkdtemp()
    save_hf(lm.model, folder, lm.tokenizer)
    lora = LoRAConfig(r=8, alpha=16.0, dropout=0.0, targets=("q", "v"))

    def ours_step(model, optimizer):
        def step(batch):
            _, loss = model(batch["idx"], batch["targets"])  # (the "real" count is not an input)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def their_step(model, optimizer):
        def step(batch):
            logits = model(input_ids=batch["idx"]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    results = {}
    for mode in ("lora", "full"):
        ours = load_pretrained(args.model).model.train()
        if mode == "lora":
            torch.manual_seed(0)
            lm.spec.add_lora(ours, lora)
        opt = torch.optim.AdamW([q for q in ours.parameters() if q.requires_grad], lr=1e-5)
        results[f"ours {mode}"] = run(ours_step(ours, opt), batches, args.steps)
        del ours, opt
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
        if mode == "lora":
            names = sorted({m.rsplit(".", 1)[-1] for m in peft_modules(lm.model).values() if m} & {"q_proj", "v_proj"})
            theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=names))
        opt = torch.optim.AdamW([q for q in theirs.parameters() if q.requires_grad], lr=1e-5)
        results[f"theirs {mode}"] = run(their_step(theirs, opt), batches, args.steps)
        del theirs, opt
    print(f"{args.model} on {args.data}: batches of {args.batch_size}, {args.steps} timed steps, fp32, {args.threads} threads")
    for name, (tps, mib) in results.items():
        print(f"  {name:12s} {tps:8.1f} tokens/s   peak +{mib:7.0f} MiB")
    for mode in ("lora", "full"):
        (a, ma), (b, mb) = results[f"ours {mode}"], results[f"theirs {mode}"]
        print(f"  {mode}: ours / theirs  speed {a / b:.2f}x, memory " + (f"{ma / mb:.2f}x" if mb > 0 else "n/a (theirs added none)"))


if __name__ == "__main__":
    main()
