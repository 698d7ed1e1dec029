"""Probe: can a linear readout of the first pass's state name loop counts past the ones it was fitted on?

The depth head (``mythic/recurrence/depth_head.py``) is a classifier, so it names only the counts it was
fitted on. A regression of the count on the same standardised state, rounded,

    T̂ = clamp(round(w · (h₁ − μ) / σ + b), 1, max_loops)       (ridge: λ‖w‖², closed form)

could name a larger count for a deeper question if the state holds the count along one direction. This
script fits both on a trained token-loop run (``mythic train recipes/pointer-smollm2-cpu.yaml``) at the
prompt's last token, on ``--per-difficulty`` train examples of each difficulty, and prints, for each valid
difficulty, the share each readout names exactly and the regression's mean prediction.

    python benchmarks/depth_readout_probe.py RUN DATA [--per-difficulty 250] [--lambdas 0.01,1,100]

RUN holds ``final/``; DATA holds ``train.jsonl`` and ``valid.jsonl`` (the run's task files). Nothing here
changes the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mythic.loading import load_checkpoint, load_tokenizer
from mythic.models.protocol import LoopedModel
from mythic.recurrence.depth_head import DepthHead
from mythic.tasks.files import Task, read_tasks
from mythic.train.depth import first_states, sample_by_difficulty, trained_loops


def prompt_states(
    model: LoopedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[Task]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) first-pass states at each example's prompt's last token (its first read position), (N,) counts."""
    states, owners = first_states(model, tokenizer, tasks, 32)
    first = torch.ones_like(owners, dtype=torch.bool)
    first[1:] = owners[1:] != owners[:-1]
    return states[first], torch.tensor([trained_loops(t) for t in tasks])


def ridge(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """(D + 1,) the ridge solution of y ≈ [x, 1] · w (the bias not penalised)."""
    a = torch.cat([x, torch.ones(len(x), 1)], 1)
    eye = torch.eye(a.shape[1])
    eye[-1, -1] = 0
    return torch.linalg.solve(a.T @ a + penalty * eye, a.T @ y.float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--per-difficulty", type=int, default=250)
    parser.add_argument("--lambdas", default="0.01,1,100")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.run / "final")
    tokenizer = load_tokenizer(args.run / "final")
    max_loops = model.recurrence.max_loops
    train = sample_by_difficulty(read_tasks(args.data / "train.jsonl"), args.per_difficulty, 0)
    x_train, y_train = prompt_states(model, tokenizer, train)
    x_valid, y_valid = prompt_states(model, tokenizer, read_tasks(args.data / "valid.jsonl"))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    z_train, z_valid = (x_train - mean) / std, (x_valid - mean) / std
    difficulties = sorted(set(y_valid.tolist()))

    def exact(named: torch.Tensor) -> dict[int, float]:
        return {d: round(100 * float((named[y_valid == d] == d).float().mean()), 1) for d in difficulties}

    rows: dict[str, dict[str, dict[int, float]]] = {}
    for penalty in [float(v) for v in args.lambdas.split(",")]:
        w = ridge(z_train, y_train, penalty)
        predicted = torch.cat([z_valid, torch.ones(len(z_valid), 1)], 1) @ w
        named = predicted.round().clamp(1, max_loops).long()
        rows[f"ridge λ={penalty:g}"] = {
            "exact %": exact(named),
            "mean prediction": {d: round(float(predicted[y_valid == d].mean()), 2) for d in difficulties},
        }
    head = DepthHead(x_train.shape[1], max_loops)
    head.fit(x_train, y_train)
    rows["classifier (the depth head)"] = {"exact %": exact(head(x_valid))}
    print(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
