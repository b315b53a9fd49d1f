"""metrics.jsonl (one JSON record a line) and the loss plot drawn from it."""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.fileio import atomic_path, atomic_write


class MetricsLog:
    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        if truncate_after_step is not None and self.path.is_file():
            # Resuming: keep what the checkpoint's step had seen, drop what the interrupted run logged after it.
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a line cut by the crash
                if isinstance(rec, dict) and type(rec.get("step")) is int and rec["step"] <= truncate_after_step:
                    self.records.append(rec)  # (a line that is not a record of ours is dropped)
        self._rewrite()

    def _rewrite(self) -> None:
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, **record) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, png: Path, title: str = "") -> None:
        """Train loss (every logged step) and the train/val evaluations against step, written atomically."""
        from matplotlib.figure import Figure  # no pyplot: a notebook's own backend is left as it is

        def has(r, *keys):  # numbers under these keys (a resumed log may hold edited records)
            return all(type(r.get(k)) in (int, float) for k in keys)

        steps = [r for r in self.records if r.get("kind") == "train" and has(r, "step", "loss")]
        evals = [r for r in self.records if r.get("kind") == "eval" and has(r, "step", "train_loss", "val_loss")]
        fig = Figure(figsize=(7, 4.2), dpi=110)
        ax = fig.subplots()
        if steps:
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.45, label="train (batch)")
        if evals:
            ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3, label="train (eval)")
            ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png")
