"""What the parts of a char GPT's CPU training step are worth: the step as the Trainer makes it ("as-trained")
against variants that make one part cheaper or free, timed in chunks of steps taken in turn in one process (as
benchmarks/train_char.py's --chunks: this CPU's speed drifts, and chunks a second apart see the same speed).

    python benchmarks/train_step_bounds.py [--preset gpt-char-baby] [--chunks 30] [--chunk-steps 25]
                                           [--variants compiled,no-optimizer,gelu-multiply,flat-adamw,...] [--threads]
                                           [--nanogpt PATH/TO/nanoGPT/model.py] [--precision auto|fp32|bf16] [--products]

Each variant's line is the median of its chunks' speed-ups over as-trained, with their middle half:
  compiled        torch.compile's forward and backward (`--set compile=true`: a way to train)
  no-optimizer    clipping and AdamW skipped: the most that a faster optimizer step could give
  compiled-no-optimizer
                  both: the most that a faster optimizer step could give the compiled step
  hand-backward   the GPT's forward and backward written out by hand, one autograd node for the whole loss (no graph
                  of ~150 nodes, no engine walking it), the ops autograd runs, in its order (the gradients are checked
                  against autograd's and printed first): what autograd costs the step, the first part of a
                  hand-written training step (bf16 with our attention kernel; a GPT without biases or dropout)
  gelu-multiply   GELU's backward made one multiply (`dy * x`, in place of a derivative that the forward would
                  save, whose cost is left out): the most that such a GELU could give
  flat-adamw      parameters, gradients (gathered by one `cat`) and AdamW's moments in one buffer each, one norm for
                  the clipping, which AdamW's fused kernel applies as its gradient scale: a way to train, not the
                  Trainer's (it must equal AdamW + clip_grad_norm_, which is checked and printed first)
  free-layernorm  every LayerNorm an identity: the most that a faster LayerNorm (forward and backward) could give
  relu            GELU replaced by ReLU, whose forward and backward are one comparison: the most that a faster GELU
                  could give
  all-bf16        the weights in bf16 and no autocast (bf16 AdamW; LayerNorm, residual and loss in bf16): the most
                  that removing autocast's casts could give
  products-only   all four at once (free LayerNorm, ReLU, all-bf16, no optimizer): what is left is the products,
                  the attention, the embedding and the loss, with their autograd; the most that making every other
                  part free could give
The last four are bounds, not ways to train. With --nanogpt, nanoGPT's model (the same Trainer, batch and
precision) is timed in the same chunks, and every variant's speed-up over it is printed too. --precision sets what
every trainer but all-bf16 and products-only trains in (theirs is bf16 weights without autocast): "auto" (bf16 on a
CPU that multiplies it natively) by default; fp32 is what nanoGPT's train.py itself trains in on a CPU.
--products adds a step of the training step's matrix products alone, in the same chunks (the forward's, and the
backward's two a Linear: dx and the weight's gradient from the transposed activations, as autograd makes them; each
with its operands in cache): no step made of these products takes less, so its line against nanoGPT's model is the
most that a step of ours can be against it, at this precision, on this machine.
--threads then times the step with the whole batch on two threads and on one, and half the batch on one: half the
batch on one thread against the whole on two is the most that giving each core half of the batch (data parallel
within a step) could gain, before the two halves share the machine and sum their gradients (as two processes under
torchrun they do both). The measured figures are in the README's results table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.batches import TokenBatches
from scratchllm.data.tokens import corpus_tokens
from scratchllm.device import DTYPES, PRECISIONS, autocast, resolve_precision
from scratchllm.layers import causal_attention
from scratchllm.layers.mlp import MLP
from scratchllm.models import build_model
from scratchllm.train.optim import parameter_names
from scratchllm.train.presets import get_preset
from scratchllm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from train_char import char_gpt_presets, nanogpt_model, paired_chunks, print_chunk_ratios  # noqa: E402

VARIANTS = ("compiled", "no-optimizer", "compiled-no-optimizer", "hand-backward", "gelu-multiply", "flat-adamw",
            "free-layernorm", "relu", "all-bf16", "products-only")


class _GeluMultiplyBackward(torch.autograd.Function):
    """GELU forward; backward `dy * x`: the cost of one multiply standing in for gelu_backward (not its value)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return dy * x


class GeluMultiplyBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluMultiplyBackward.apply(x)


class _HandStep(torch.autograd.Function):
    """A GPT's loss (bf16 products, as under autocast; LayerNorm, residual and loss in fp32) in the forward, and in
    the backward every parameter's gradient by hand: the ops autograd runs for it, in its order."""

    @staticmethod
    def forward(ctx, idx: torch.Tensor, targets: torch.Tensor, gpt: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        # params: the GPT's parameters, unused here but passed so that autograd hands them backward's gradients
        B, T = idx.shape
        N, C, H = B * T, gpt.config.n_embd, gpt.config.n_head
        layer_norm = torch.ops.aten.native_layer_norm  # -> (out, mean, 1 / std): what its backward takes
        with torch.autocast("cpu", enabled=False):
            x = (gpt.wte.weight[idx] + gpt.wpe.weight[:T]).view(N, C)  # (N, C) fp32: the residual stream
            saved = []
            for block in gpt.blocks:
                linears = (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)
                w = tuple(lin.weight.to(torch.bfloat16) for lin in linears)  # autocast's casts, once a step
                w_qkv, w_proj, w_fc, w_down = w
                h, mean_1, rstd_1 = layer_norm(x, [C], block.ln_1.weight, None, gpt.config.norm_eps)
                h = h.to(torch.bfloat16)
                qkv = h @ w_qkv  # (N, 3C)
                y, probs = torch.ops.scratchllm.causal_attention(qkv.view(B, T, 3 * C), H)
                y = y.view(N, C)
                x_mid = x + y @ w_proj
                h_mid, mean_2, rstd_2 = layer_norm(x_mid, [C], block.ln_2.weight, None, gpt.config.norm_eps)
                h_mid = h_mid.to(torch.bfloat16)
                f = h_mid @ w_fc  # (N, 4C)
                g = F.gelu(f)
                saved.append((x, mean_1, rstd_1, h, qkv, probs, y, x_mid, mean_2, rstd_2, h_mid, f, g, w))
                x = x_mid + g @ w_down
            h_f, mean_f, rstd_f = layer_norm(x, [C], gpt.ln_f.weight, None, gpt.config.norm_eps)
            h_f = h_f.to(torch.bfloat16)
            wte = gpt.wte.weight.to(torch.bfloat16)
            log_probs = torch.log_softmax((h_f @ wte.t()).float(), dim=-1)  # (N, vocab)
            loss = -log_probs.gather(1, targets.view(N, 1)).mean()
        ctx.gpt, ctx.idx, ctx.targets, ctx.saved = gpt, idx, targets, saved
        ctx.final = (x, mean_f, rstd_f, h_f, wte, log_probs)
        return loss

    @staticmethod
    def backward(ctx, d_loss: torch.Tensor):
        gpt, idx, saved = ctx.gpt, ctx.idx, ctx.saved
        x, mean_f, rstd_f, h_f, wte, log_probs = ctx.final
        (B, T), (N, C) = idx.shape, x.shape
        H = gpt.config.n_head
        norm_backward = torch.ops.aten.native_layer_norm_backward
        grads = {}
        d_logits = log_probs.exp()  # softmax - one-hot, over the N positions' mean
        d_logits[torch.arange(N), ctx.targets.view(N)] -= 1.0
        d_logits = (d_logits * (d_loss / N)).to(torch.bfloat16)
        d_wte = (d_logits.t() @ h_f).float()  # the head's share of the tied table's gradient
        dx, grads[gpt.ln_f.weight], _ = norm_backward((d_logits @ wte).float(), x, [C], mean_f, rstd_f, gpt.ln_f.weight,
                                                      None, [True, True, False])
        for block, (x_in, mean_1, rstd_1, h, qkv, probs, y, x_mid, mean_2, rstd_2, h_mid, f, g, w) in zip(
                reversed(gpt.blocks), reversed(saved)):
            w_qkv, w_proj, w_fc, w_down = w
            d_out = dx.to(torch.bfloat16)  # the MLP's output gradient
            grads[block.mlp.proj.weight] = (g.t() @ d_out).float()
            d_f = torch.ops.aten.gelu_backward(d_out @ w_down.t(), f)
            grads[block.mlp.fc.weight] = (h_mid.t() @ d_f).float()
            d, grads[block.ln_2.weight], _ = norm_backward((d_f @ w_fc.t()).float(), x_mid, [C], mean_2, rstd_2,
                                                           block.ln_2.weight, None, [True, True, False])
            dx = dx + d
            d_out = dx.to(torch.bfloat16)  # the attention's output gradient
            grads[block.attn.proj.weight] = (y.t() @ d_out).float()
            d_qkv = torch.ops.scratchllm.causal_attention_backward(qkv.view(B, T, 3 * C), probs,
                                                                   (d_out @ w_proj.t()).view(B, T, C), H).view(N, 3 * C)
            grads[block.attn.qkv.weight] = (h.t() @ d_qkv).float()
            d, grads[block.ln_1.weight], _ = norm_backward((d_qkv @ w_qkv.t()).float(), x_in, [C], mean_1, rstd_1,
                                                           block.ln_1.weight, None, [True, True, False])
            dx = dx + d
        grads[gpt.wpe.weight] = torch.zeros_like(gpt.wpe.weight)
        grads[gpt.wpe.weight][:T] = dx.view(B, T, C).sum(0)
        grads[gpt.wte.weight] = d_wte.index_add_(0, idx.view(N), dx)
        ctx.saved = ctx.final = None
        return None, None, None, *(grads[p] for p in gpt.parameters())


def hand_backward_fits(cfg, precision: str) -> bool:
    """Whether _HandStep computes this GPT's step: no biases or dropout, GELU, bf16 with our attention kernel."""
    return (not cfg.bias and not cfg.dropout and cfg.activation == "gelu" and causal_attention.kernel_available()
            and resolve_precision(precision, torch.device("cpu")) == "bf16")


class HandBackwardGPT(nn.Module):
    """A GPT (bias-free, no dropout) whose training loss is one _HandStep: the Trainer's step around it is unchanged."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        return None, _HandStep.apply(idx, targets, self.gpt, *self.gpt.parameters())


class FlatAdamW:
    """AdamW + global-norm clipping over one flat buffer each for weights, gradients and moments: two calls of
    torch's fused AdamW kernel a step (decayed matrices, then the rest), the clip as the kernel's gradient scale
    (it divides the gradients by it: norm / max_norm when that is above 1, as clip_grad_norm_ scales them)."""

    def __init__(self, model: nn.Module, cfg):
        named = dict(model.named_parameters())
        self.params = [named[name] for name in parameter_names(model)]  # decayed (>= 2-D) first
        sizes = [p.numel() for p in self.params]
        total, decayed = sum(sizes), sum(n for p, n in zip(self.params, sizes) if p.dim() >= 2)
        self.weights = torch.cat([p.detach().reshape(-1) for p in self.params])
        offset = 0
        for p, n in zip(self.params, sizes):
            p.data = self.weights[offset:offset + n].view_as(p)  # the parameter now lives in the flat buffer
            offset += n
        self.grads, self.exp_avg, self.exp_avg_sq = torch.empty(total), torch.zeros(total), torch.zeros(total)
        # the norm is taken parameter by parameter, as clip_grad_norm_ takes it: one fp32 norm over all 0.8M
        # gradients of the baby came out 2e-5 below the exact (fp64) one, the norm of the 28 norms 2e-7
        self.grad_pieces = list(torch.split(self.grads, sizes))
        self.segments = [(0, decayed, cfg.weight_decay), (decayed, total, 0.0)]
        self.steps = [torch.zeros(()) for _ in self.segments]
        self.cfg = cfg
        self.param_groups = [{"lr": cfg.lr}]  # the Trainer sets each step's learning rate here

    def step(self) -> None:
        torch.cat([p.grad.reshape(-1) for p in self.params], out=self.grads)
        scale = torch.ones(())
        if self.cfg.grad_clip > 0:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.grad_pieces)))
            scale = ((norm + 1e-6) / self.cfg.grad_clip).clamp_(min=1.0)
        torch._foreach_add_(self.steps, 1)
        for (a, b, decay), step in zip(self.segments, self.steps):
            torch._fused_adamw_([self.weights[a:b]], [self.grads[a:b]], [self.exp_avg[a:b]], [self.exp_avg_sq[a:b]],
                                [], [step], lr=self.param_groups[0]["lr"], beta1=self.cfg.betas[0],
                                beta2=self.cfg.betas[1], weight_decay=decay, eps=1e-8, amsgrad=False, maximize=False,
                                grad_scale=scale, found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def without_layernorms(model: nn.Module) -> None:
    """Every nn.LayerNorm in `model` replaced by an identity."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.Identity())


class OnThreads:
    """A trainer whose steps run on `threads` intra-op threads (torch's setting is the process's: set each step)."""

    def __init__(self, trainer: Trainer, threads: int):
        self.trainer, self.threads, self.model = trainer, threads, trainer.model

    def train_step(self):
        torch.set_num_threads(self.threads)
        return self.trainer.train_step()


def product_shapes(cfg, tokens: int) -> list[tuple[int, int, int, bool, int]]:
    """A GPT training step's matrix products: (m, k, n, A transposed, how many a step). Our Linear's weight is
    (in, out): forward x (tokens, in) @ W, backward dx = dy @ W^T and dW = x^T @ dy; the tied head multiplies by
    the (vocab, embd) embedding."""
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # qkv, attention's projection, the MLP's two
    shapes = []
    for d_in, d_out in linears:
        shapes += [(tokens, d_in, d_out, False, L), (tokens, d_out, d_in, False, L), (d_in, tokens, d_out, True, L)]
    return shapes + [(tokens, C, V, False, 1), (tokens, V, C, False, 1), (V, tokens, C, True, 1)]


class ProductsAlone:
    """A "trainer" whose step is only the training step's matrix products, one shape after another with its
    operands in cache, taken in the same chunks as the real steps: no step made of these products can be faster."""

    def __init__(self, cfg, tokens: int, dtype: torch.dtype):
        self.model = nn.Identity()  # paired_chunks sets it to training mode
        self.operands, self.gflop = [], 0.0
        for m, k, n, transposed, times in product_shapes(cfg, tokens):
            a = torch.randn(k, m, dtype=dtype).t() if transposed else torch.randn(m, k, dtype=dtype)
            self.operands += [(a, torch.randn(k, n, dtype=dtype))] * times
            self.gflop += 2 * m * k * n * times / 1e9

    def train_step(self) -> torch.Tensor:
        for a, b in self.operands:
            out = torch.mm(a, b)
        return out[0, 0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt-char-baby", choices=char_gpt_presets())
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--variants", default=None, help=f"comma-separated, of {','.join(VARIANTS)} (default: all that apply)")
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--chunk-steps", type=int, default=25)
    ap.add_argument("--threads", action="store_true", help="also: the whole batch on all threads and on one, half on one")
    ap.add_argument("--nanogpt", default=None, help="path to nanoGPT's model.py: its model timed in the same chunks")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="what the trainers train in (all-bf16 and products-only excepted)")
    ap.add_argument("--products", action="store_true", help="also: a step of the products alone, in the same chunks")
    args = ap.parse_args()
    # by default every variant that this preset and precision can run (hand-backward is written for some)
    variants = [v for v in args.variants.split(",") if v] if args.variants is not None else \
        [v for v in VARIANTS if v != "hand-backward" or hand_backward_fits(get_preset(args.preset).model, args.precision)]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.nanogpt and not Path(args.nanogpt).is_file():
        ap.error(f"--nanogpt {args.nanogpt}: no such file; give the path of nanoGPT's model.py")
    if args.chunks < 2 or args.chunk_steps < 1:
        ap.error("--chunks takes at least 2 (their ratios' median and middle half); --chunk-steps at least 1")

    preset = get_preset(args.preset)
    tokenizer, train, val = corpus_tokens(args.data)
    model_cfg = dataclasses.replace(preset.model, vocab_size=tokenizer.vocab_size)
    folder = tempfile.TemporaryDirectory(prefix="train-step-bounds-")  # the trainers' out_dir (steps write nothing)
    out = Path(folder.name)

    def trainer(variant: str, **changes) -> Trainer:
        wanted = dataclasses.replace(preset.train, **{"precision": args.precision, **changes})
        cfg = dataclasses.replace(wanted, compile=variant in ("compiled", "compiled-no-optimizer"))
        free_optimizer = variant in ("no-optimizer", "compiled-no-optimizer", "products-only")
        if free_optimizer or variant == "flat-adamw":
            cfg = dataclasses.replace(cfg, grad_clip=0.0)  # no clip_grad_norm_: none at all, or FlatAdamW's own
        all_bf16 = variant in ("all-bf16", "products-only")
        if all_bf16:
            cfg = dataclasses.replace(cfg, precision="fp32")  # no autocast: the bf16 weights set the products' type
        torch.manual_seed(cfg.seed)
        if variant == "nanogpt":
            model = nanogpt_model(args.nanogpt, model_cfg)
        else:
            relu = variant in ("relu", "products-only")
            model = build_model(preset.model_type, dataclasses.replace(model_cfg, activation="relu") if relu else model_cfg)
        if variant in ("free-layernorm", "products-only"):
            without_layernorms(model)
        if all_bf16:
            model.to(torch.bfloat16)
        if variant == "hand-backward":
            model = HandBackwardGPT(model)
        if variant == "gelu-multiply":
            for mlp in (m for m in model.modules() if isinstance(m, MLP)):
                mlp.act = GeluMultiplyBackward()
        made = Trainer(model, cfg, tokenizer, TokenBatches(train, val, model_cfg.block_size, seed=cfg.seed),
                       out / variant, meta={"model_type": preset.model_type}, progress=False)
        if free_optimizer:
            made.optimizer.step = lambda *args, **kwargs: None
        if variant == "flat-adamw":
            made.optimizer = FlatAdamW(made.model, wanted)
        return made

    if "hand-backward" in variants and not hand_backward_fits(preset.model, args.precision):
        ap.error("hand-backward is written for a GPT without biases or dropout, with GELU, in bf16 on a CPU with "
                 "AVX512-BF16 (our attention kernel): pick such a preset (gpt-char-baby) and --precision auto or bf16")

    print(f"{args.preset}: batch {preset.train.batch_size} x block {model_cfg.block_size}, precision {args.precision}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}")
    if "flat-adamw" in variants:  # a variant that trains must train as the Trainer does: the same state after 5 steps,
        # in fp32 (in bf16 a weight's last-bit difference changes the products' rounding, and so the next gradients)
        # and with a clip that every step reaches
        check = {"precision": "fp32", "grad_clip": 0.05}
        reference, flat = trainer("as-trained", **check), trainer("flat-adamw", **check)
        for _ in range(5):
            reference.train_step(), flat.train_step()
        # the weights, and the first moments: AdamW's step hardly moves with a gradient's scale, its moment
        # does, so a wrong clip shows there
        params = dict(reference.model.named_parameters())
        in_order = [params[name] for name in parameter_names(reference.model)]
        expected = {"weights": torch.cat([p.detach().reshape(-1) for p in in_order]),
                    "first moments": torch.cat([reference.optimizer.state[p]["exp_avg"].reshape(-1) for p in in_order])}
        for what, got in (("weights", flat.optimizer.weights), ("first moments", flat.optimizer.exp_avg)):
            difference = (got - expected[what]).abs().max().item() / expected[what].abs().max().item()
            print(f"flat-adamw against AdamW + clip_grad_norm_ after 5 steps: {what} differ by {difference:.1e} of "
                  f"the largest at most")
            if not difference <= 1e-6:
                sys.exit(f"error: flat-adamw does not train as the Trainer does ({what} differ by {difference:.1e})")

    names = ["as-trained", *variants, *(["nanogpt"] if args.nanogpt else [])]
    made = {name: trainer(name) for name in names}
    if "hand-backward" in variants:  # the same gradients as autograd's, from the same weights and batch
        reference, hand = made["as-trained"], made["hand-backward"]
        for one in (reference, hand):
            batch, = one.batches.draw_step(preset.train.batch_size, 1)
            with autocast(one.precision, one.device):
                one.model(**batch)[1].backward()
        worst = max(((q.grad - p.grad).norm() / p.grad.norm()).item()
                    for p, q in zip(reference.model.parameters(), hand.model.parameters()))
        print(f"hand-backward against autograd, one step's gradients: they differ by {worst:.1e} of their norm at most")
        if not worst <= 1e-6:
            sys.exit(f"error: hand-backward's gradients are not autograd's (they differ by {worst:.1e} of their norm)")
        for one in (reference, hand):
            one.optimizer.zero_grad(set_to_none=True)  # the timed steps start as every other trainer's do
    if args.products:
        made["products"] = ProductsAlone(model_cfg, preset.train.batch_size * model_cfg.block_size,
                                         DTYPES[resolve_precision(args.precision, torch.device("cpu"))])
    times = paired_chunks(made, args.chunks, args.chunk_steps, reference="as-trained")
    if args.nanogpt:
        print("\n  the same chunks against nanoGPT's model:")
        print_chunk_ratios(times, reference="nanogpt")
    if args.products:
        ms = statistics.median(times["products"])
        print(f"\n  the step's {len(made['products'].operands)} products alone: median {ms:.2f} ms a step, "
              f"{made['products'].gflop / ms * 1e3:.0f} GFLOP/s")
        if args.nanogpt:
            budget = statistics.median([theirs / 2 - ours for theirs, ours in zip(times["nanogpt"], times["products"])])
            print(f"  2x nanoGPT's model leaves (chunks' median) {budget:.2f} ms a step beside the products for the "
                  f"attention, norms, activations, casts, loss, optimizer and autograd; as trained they take "
                  f"{statistics.median([t - p for t, p in zip(times['as-trained'], times['products'])]):.2f}")
    if args.threads:
        threads = torch.get_num_threads()
        half = max(1, preset.train.batch_size // 2)
        paired_chunks({f"batch {preset.train.batch_size}, {threads} threads": OnThreads(trainer("as-trained"), threads),
                       f"batch {preset.train.batch_size}, 1 thread": OnThreads(trainer("as-trained"), 1),
                       f"batch {half}, 1 thread": OnThreads(trainer("as-trained", batch_size=half), 1)},
                      args.chunks, args.chunk_steps, reference=f"batch {preset.train.batch_size}, {threads} threads")
        torch.set_num_threads(threads)
    folder.cleanup()


if __name__ == "__main__":
    main()
