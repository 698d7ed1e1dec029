"""Probe: a retrofit loop whose state passes through the vocabulary, trained from the final answer alone.

Not the library's recurrence (that loops a middle block over every position); a measuring stick for a
design it could take. The prompt but its last token runs once through the pretrained model (its keys and
values cached); the last position then runs T passes of the whole stack, each fed the previous pass's
prediction back as a soft token:

    x_1 = E[last token]
    logits_t = Model(x_t | cached prompt)                                (the whole stack and its head)
    x_{t+1} = (1 − g) · E[last token] + g · softmax(logits_t) · E + p_t  (E: the tied embedding, g = σ(a))

so a model that has learned one step ("the successor of the last token") takes one more with each pass.
T = 1 is the fine-tuned model's own forward. p_t is a learned vector per pass (zero at the start;
``--loop-embedding``): without it a pass cannot tell how many it follows, so it cannot stop.
Trained: a peft LoRA (rank 8) on q/k/v/o of every layer, a (init 2: g = 0.88) and p. Loss:
cross-entropy of the T-th pass's logits against the answer's first token. T = d, the question's
difficulty, and after ``--extra-after`` steps d + U{0 … extra} (loops the answer must survive); the
hardest difficulty drawn rises from the file's lowest to its highest over the first half of the steps.
``--arm single``, the control: the same parameters trained at T = 1 on every question.

The stop (``depth``, after training): a linear head reads the loop count off pass 1's last hidden state,

    T̂ = argmax_c (W · (h_1 − μ) / σ + b)_c      c ∈ the train file's difficulties

fitted by L-BFGS (cross-entropy + 1e-3 ‖W‖²) on ``--depth-examples`` train questions per difficulty
against their difficulty, the model frozen (the loop count T = d that training ran). ``eval`` then also
scores every question at its own T̂ (the ``depth`` entry: accuracy, mean T̂, % with T̂ = d). The head
names only counts it was fitted on: beyond the train file's hardest it cannot ask for more.

    python benchmarks/token_loop_probe.py train DATA RUN [--seed S] [--arm single] [--extra 2 --loop-embedding]
    python benchmarks/token_loop_probe.py depth DATA RUN [--seed S]   (fits the depth head: RUN/depth.pt)
    python benchmarks/token_loop_probe.py eval DATA RUN --split valid,test   (accuracy % by difficulty, T = 1 … 8)
    python benchmarks/token_loop_probe.py report DATA RUN …   (mean ± SE over the runs of each arm, on test)

``report`` groups runs by folder name less its ``-sN`` suffix. Per band (the train split's difficulties,
and those above) it prints each arm's accuracy at every fixed T, the T it would pick on valid (best band
mean over its runs), at T = d (one pass per step: the loop count told the question's depth; a
``--arm single`` run at T = 1 alone) and, where the runs have a depth head, at T̂ (and the mean T̂),
beside the generator's shallow baselines scored on the test file (``mythic.tasks.baselines``).

DATA holds train/valid/test.jsonl of {prompt, answer, difficulty} (``mythic tasks make``); RUN gets
``weights.pt``, ``args.json``, ``train.jsonl`` (every step's loss), ``depth.pt`` (and ``depth.json``, its
fit) and ``SPLIT.json``. One torch thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mythic.eval.stats import mean_and_stderr
from mythic.tasks.baselines import score as baseline_scores
from mythic.tasks.files import Task, read_tasks
from mythic.tasks.make import generator

MAX_PASSES = 8


class TokenLoop:
    """The base with its LoRA, gate and pass vectors, and the loop at the last position."""

    def __init__(self, base: str, loop_embedding: bool) -> None:
        self.tok = AutoTokenizer.from_pretrained(base)
        self.tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        self.model = get_peft_model(model, lora)
        self.embedding = self.model.get_input_embeddings().weight
        self.gate = torch.nn.Parameter(torch.tensor(2.0))
        self.pass_vectors = torch.nn.Parameter(torch.zeros(MAX_PASSES, self.embedding.shape[1]))
        self.loop_embedding = loop_embedding

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and position ids of the left-padded prompts."""
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        return enc["input_ids"], mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def whole_prompt_logits(self, prompts: list[str], last: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V): the model's own forward of the whole prompts (their last token ids replaced by ``last``)."""
        ids, mask, positions = self.encode(prompts)
        if last is not None:
            ids[:, -1] = last
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]

    def passes(self, prompts: list[str], n: int, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, B, V): the last position's logits after passes 1 … n (``hard`` feeds back the argmax token),
        and (B, D): pass 1's last hidden state (after the final norm), which the depth head reads."""
        ids, mask, positions = self.encode(prompts)
        prefix = self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
        )
        cache, e = prefix.cache, self.embedding[ids[:, -1]]
        x, out, first = e, [], torch.empty(0)
        for t in range(n):
            step = self.model(
                inputs_embeds=x[:, None],
                attention_mask=mask,
                position_ids=positions[:, -1:],
                cache=cache,
                use_cache=True,
                output_hidden_states=t == 0,
            )
            logits = step.logits[:, -1]
            if t == 0:
                first = step.hidden_states[-1][:, -1]
            cache.crop(-1)
            out.append(logits)
            fed = self.embedding[logits.argmax(-1)] if hard else torch.softmax(logits, -1) @ self.embedding
            g = torch.sigmoid(self.gate)
            x = (1 - g) * e + g * fed + (self.pass_vectors[t] if self.loop_embedding else 0.0)
        return torch.stack(out), first

    def answer_ids(self, rows: list[Task]) -> torch.Tensor:
        return torch.tensor([self.tok(r.answer)["input_ids"][0] for r in rows])

    def trainable(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.model.state_dict().items() if "lora_" in k}
        return {**state, "gate": self.gate.detach(), "pass_vectors": self.pass_vectors.detach()}


def by_difficulty(path: Path) -> dict[int, list[Task]]:
    """The task file's examples by difficulty (``read_tasks``: strict); every example needs one."""
    rows: dict[int, list[Task]] = collections.defaultdict(list)
    for task in read_tasks(path):
        if task.difficulty is None:
            raise SystemExit(f"{path}: an example without a difficulty (the loop count is tied to it)")
        rows[task.difficulty].append(task)
    return dict(sorted(rows.items()))


def train(args: argparse.Namespace, loop: TokenLoop) -> None:
    rng = random.Random(args.seed)
    data = by_difficulty(args.data / "train.jsonl")
    lowest, highest = min(data), max(data)
    params = [p for p in loop.model.parameters() if p.requires_grad]
    scalars = [loop.gate, loop.pass_vectors]
    opt = torch.optim.AdamW([{"params": params}, {"params": scalars, "lr": 1e-2}], lr=1e-3, weight_decay=0.0)
    args.run.mkdir(parents=True, exist_ok=False)
    (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    start, log = time.time(), (args.run / "train.jsonl").open("w")
    loop.model.train()
    for step in range(1, args.steps + 1):
        reach = min(highest, lowest + (highest - lowest) * step // (args.steps // 2))
        d = rng.randint(lowest, reach)
        rows = rng.sample(data[d], args.batch)
        extra = args.extra if step > args.extra_after else 0
        loops = torch.tensor([1 if args.arm == "single" else d + (rng.randint(0, extra) if extra else 0) for _ in rows])
        logits = loop.passes([r.prompt for r in rows], int(loops.max()))[0][loops - 1, torch.arange(len(rows))]
        loss = torch.nn.functional.cross_entropy(logits, loop.answer_ids(rows))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*params, *scalars], 1.0)
        opt.step()
        g = torch.sigmoid(loop.gate).item()
        record = {"step": step, "d": d, "T": loops.tolist(), "ce": loss.item(), "g": g, "s": time.time() - start}
        log.write(json.dumps(record) + "\n")
        if step % 10 == 0:
            log.flush()
            print(json.dumps(record), flush=True)
    torch.save(loop.trainable(), args.run / "weights.pt")


def load_weights(run: Path, loop: TokenLoop) -> None:
    state = torch.load(run / "weights.pt")
    loop.gate.copy_(state.pop("gate"))
    loop.pass_vectors.copy_(state.pop("pass_vectors"))
    expected = {k for k in loop.model.state_dict() if "lora_" in k}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)[:3]
        raise SystemExit(f"weights.pt does not hold this model's LoRA tensors exactly (e.g. {odd})")
    loop.model.load_state_dict(state, strict=False)
    loop.model.eval()


def first_hidden(loop: TokenLoop, rows: list[Task]) -> torch.Tensor:
    """(N, D): pass 1's last hidden state of every row, 32 rows a forward."""
    return torch.cat([loop.passes([r.prompt for r in rows[i : i + 32]], 1)[1] for i in range(0, len(rows), 32)])


@torch.no_grad()
def fit_depth(args: argparse.Namespace, loop: TokenLoop) -> None:
    """The depth head: a linear classifier of pass 1's last hidden state (standardised) onto the train file's
    difficulties, the loop count to run; fitted on the frozen looped model, ``--depth-examples`` train
    questions per difficulty, L-BFGS on cross-entropy + 1e-3 ‖W‖²."""
    load_weights(args.run, loop)
    rng = random.Random(args.seed)
    data = by_difficulty(args.data / "train.jsonl")
    classes = sorted(data)
    rows = [r for d in classes for r in rng.sample(data[d], min(args.depth_examples, len(data[d])))]
    features = first_hidden(loop, rows)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x, y = (features - mean) / std, torch.tensor([classes.index(r.difficulty) for r in rows])
    head = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
    fitted = 100 * float((head(x).argmax(-1) == y).float().mean())
    print(f"depth head: {len(rows)} train questions, classes {classes}, right on {fitted:.1f} % of them")
    record = {"questions": len(rows), "classes": classes, "right_on_train": round(fitted, 1)}
    (args.run / "depth.json").write_text(json.dumps(record))
    state = {"weight": head.weight, "bias": head.bias, "mean": mean, "std": std, "classes": torch.tensor(classes)}
    torch.save(state, args.run / "depth.pt")


class DepthHead:
    """``fit_depth``'s head: the loop count it reads off pass 1's last hidden state."""

    def __init__(self, path: Path) -> None:
        self.state = torch.load(path)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        s = self.state
        logits = ((hidden - s["mean"]) / s["std"]) @ s["weight"].T + s["bias"]
        return s["classes"][logits.argmax(-1)]


@torch.no_grad()
def evaluate(args: argparse.Namespace, loop: TokenLoop) -> None:
    load_weights(args.run, loop)
    depth = DepthHead(args.run / "depth.pt") if (args.run / "depth.pt").exists() else None
    for name in args.split.split(","):
        score(args, loop, name, depth)


def score(args: argparse.Namespace, loop: TokenLoop, name: str, depth: DepthHead | None) -> None:
    split = by_difficulty(args.data / f"{name}.jsonl")
    prompts = [r.prompt for r in split[max(split)][:8]]
    gap = float((loop.passes(prompts, 1)[0][0] - loop.whole_prompt_logits(prompts)).abs().max())
    print(f"T = 1 against the model's own forward of the whole prompt: max abs diff {gap:.2e}", flush=True)
    modes = args.modes.split(",")
    table: dict[str, dict[str, dict]] = {mode: {} for mode in modes}
    if depth is not None:
        table["depth"] = {}
    for d, rows in split.items():
        learned: dict[str, float] = {}
        for mode in modes:
            hits, chosen_hits, loops = torch.zeros(MAX_PASSES), 0, torch.zeros(0, dtype=torch.long)
            for i in range(0, len(rows), 32):
                chunk = rows[i : i + 32]
                logits, hidden = loop.passes([r.prompt for r in chunk], MAX_PASSES, mode == "hard")
                right = logits.argmax(-1) == loop.answer_ids(chunk)
                hits += right.sum(-1)
                if depth is not None:
                    chosen = depth(hidden).clamp(max=MAX_PASSES)
                    chosen_hits += int(right[chosen - 1, torch.arange(len(chunk))].sum())
                    loops = torch.cat([loops, chosen])
            table[mode][str(d)] = {t + 1: round(100 * float(hits[t]) / len(rows), 1) for t in range(MAX_PASSES)}
            if depth is not None:
                learned[mode] = round(100 * chosen_hits / len(rows), 1)
                learned["T"] = round(float(loops.float().mean()), 3)
                learned["T_is_d"] = round(100 * float((loops == d).float().mean()), 1)
        if depth is not None:
            table["depth"][str(d)] = learned
        print(name, d, {mode: table[mode][str(d)] for mode in table}, flush=True)
    (args.run / f"{name}.json").write_text(json.dumps(table, indent=1))


def mean_se(values: list[float]) -> str:
    mean, se = mean_and_stderr(values)
    return f"{mean:.1f} ± {se or 0.0:.1f}"


def report(args: argparse.Namespace) -> None:
    meta = json.loads((args.data / "meta.json").read_text())
    low, high = meta["difficulty"]["train"]
    top = meta["difficulty"]["test"][1]
    bands = {"in": (low, high), "beyond": (high + 1, top)}
    arms: dict[str, list[Path]] = collections.defaultdict(list)
    for run in [args.run, *args.more]:
        arms[re.sub(r"-s\d+$", "", run.name)].append(run)

    def band(table: dict[str, dict[str, float]], lo: int, hi: int, t: int | None) -> float:
        return statistics.fmean(table[str(d)][str(t or d)] for d in range(lo, hi + 1))

    print(f"accuracy % on test, soft feedback, mean ± SE over runs; bands {bands}")
    for arm, runs in arms.items():
        valid = [json.loads((r / "valid.json").read_text())["soft"] for r in runs]
        tables = [json.loads((r / "test.json").read_text()) for r in runs]
        test, depths = [x["soft"] for x in tables], [x.get("depth") for x in tables]
        single = json.loads((runs[0] / "args.json").read_text()).get("arm") == "single"
        loops = [1] if single else range(1, MAX_PASSES + 1)
        for name, (lo, hi) in bands.items():
            best = max(loops, key=lambda t: statistics.fmean(band(v, lo, hi, t) for v in valid))
            rows = {f"T={t}": [band(x, lo, hi, t) for x in test] for t in loops}
            if not single:
                rows["T=d"] = [band(x, lo, hi, None) for x in test]
            if not single and all(depths):
                rows["learned T"] = [statistics.fmean(x[str(d)]["soft"] for d in range(lo, hi + 1)) for x in depths]
                rows["(mean learned T)"] = [statistics.fmean(x[str(d)]["T"] for d in range(lo, hi + 1)) for x in depths]
            cells = "  ".join(f"{k} {mean_se(v)}" for k, v in rows.items())
            print(f"{arm} ({len(runs)} runs) {name}: best T on valid {best}; {cells}")
    heuristics = generator(meta["generator"]).baselines
    for heuristic, values in baseline_scores(read_tasks(args.data / "test.jsonl"), heuristics, bands).items():
        print(f"baseline {heuristic}: " + "  ".join(f"{b} {100 * v:.1f}" for b, v in values["bands"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["train", "depth", "eval", "report"])
    parser.add_argument("data", type=Path, help="folder of train/valid/test.jsonl (and meta.json)")
    parser.add_argument("run", type=Path, help="run folder (train creates it)")
    parser.add_argument("more", type=Path, nargs="*", help="report: more run folders")
    parser.add_argument("--base", default="base/smollm2-135m", help="pretrained base folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", choices=["loop", "single"], default="loop", help="single: T = 1 always")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--extra", type=int, default=0, help="up to this many loops beyond d")
    parser.add_argument("--extra-after", type=int, default=150, help="the step from which --extra applies")
    parser.add_argument("--loop-embedding", action="store_true", help="add a learned vector per pass")
    parser.add_argument("--depth-examples", type=int, default=1000, help="depth: train questions per difficulty")
    parser.add_argument("--modes", default="soft,hard", help="eval: soft and/or hard feedback")
    parser.add_argument("--split", default="valid", help="eval: the splits to score, comma-separated (valid,test)")
    args = parser.parse_args()
    if args.action == "report":
        report(args)
        return
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # before the LoRA's initialisation
    loop_embedding = args.loop_embedding
    if args.action != "train":
        loop_embedding = json.loads((args.run / "args.json").read_text()).get("loop_embedding") == "True"
    loop = TokenLoop(args.base, loop_embedding)
    {"train": train, "depth": fit_depth, "eval": evaluate}[args.action](args, loop)


if __name__ == "__main__":
    main()
