"""The trainer on a real tiny retrofit wrapper: objective formulas, true base, curriculum wiring,
truncated backprop (gradients and saved-activation memory), exact resume, non-finite steps, outputs."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_recipe, write_corpus
from tiny import make_tokenizer, tiny_base, tiny_mythos, write_tiny_base
from transformers import AutoModelForCausalLM

from mythic.errors import MythicError
from mythic.eval.rows import row_mode
from mythic.loading import load_checkpoint
from mythic.models.openmythos import OpenMythosConfig, OpenMythosForCausalLM
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.train import losses
from mythic.train.curriculum import Curriculum, Depth
from mythic.train.model import add_lora, param_groups, select_trainable
from mythic.train.objective import Objective, logits_of
from mythic.train.recipe import FixedCurriculum, Lora, Loss, recipe_to_yaml, validate_recipe
from mythic.train.trainer import MetricsLog, TrainResult, check_same_recipe, default_build, setup, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-train")
    return write_tiny_base(root / "base"), write_corpus(root / "corpus")


def wrapper(base_dir: Path, seed: int = 1) -> RetrofitForCausalLM:
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = RetrofitForCausalLM.from_base(base, block_start=1, block_end=3, max_loops=4)
    torch.manual_seed(seed)
    with torch.no_grad():  # wake the recurrence up so that T matters
        for _, p in model.recurrence_parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.recurrence.rule.scale.set(0.4)
    return model


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (2, 12), generator=g)
    labels = torch.randint(3, 64, (2, 12), generator=g)
    labels[0, :4] = losses.IGNORE_INDEX
    return ids, labels


def row_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean CE of each row over its labelled positions, from full logits (B, L, V)."""
    mask = losses.valid_mask(labels)
    return (losses.token_ce(logits, labels) * mask).sum(-1) / mask.sum(-1)


def test_dual_t_objective_matches_the_formulas(tiny: tuple[Path, Path]) -> None:
    model = wrapper(tiny[0])
    loss = Loss(
        dual_t={"t_lo": 1},
        margin={"alpha": 0.1, "m": 0.5},
        focal={"gamma": 1.0},
        self_distill={"alpha": 0.3},
        kl_anchor={"alpha": 0.5, "every": 2},
    )
    ids, labels = batch()
    out = Objective(model, loss)(ids, labels, Depth(3), anchor=True)
    with torch.no_grad():
        lo, hi = model(ids, n_loops=1).logits, model(ids, n_loops=3).logits
        with model.base_mode():
            base = model(ids).logits
    ce_lo = losses.cross_entropy(lo, labels)
    ce_hi = losses.focal_ce(hi, labels, losses.focal_weights(lo, labels, 1.0))
    plain_hi = losses.cross_entropy(hi, labels)
    margin = 0.1 * torch.relu(plain_hi - ce_lo + 0.5)  # like for like: plain CE at both depths
    assert abs(margin.item() - 0.1 * torch.relu(ce_hi - ce_lo + 0.5).item()) > 5e-6  # the check tells them apart
    sd = 0.3 * losses.kl_divergence(lo, hi, labels)
    kl = 0.5 * losses.kl_divergence(base, hi, labels)
    expected = 0.5 * (ce_lo + ce_hi) + margin + sd + kl
    assert margin.item() > 0 and kl.item() > 1e-4 and sd.item() > 1e-4
    terms = {"ce_lo": ce_lo, "ce_hi": ce_hi, "ce_hi_unweighted": plain_hi, "margin": margin}
    for name, value in (terms | {"self_distill": sd, "kl_anchor": kl}).items():
        assert abs(out[name].item() - value.item()) < 1e-6, name
    assert abs(out["loss"].item() - expected.item()) < 1e-5
    assert out["seq_loops"].tolist() == [1, 1, 3, 3]
    assert torch.allclose(out["seq_ce"][2:], row_ce(hi, labels))
    no_anchor = Objective(model, loss)(ids, labels, Depth(3), anchor=False)
    assert "kl_anchor" not in no_anchor
    assert abs(no_anchor["loss"].item() - (expected - kl).item()) < 1e-5


def test_base_mode_is_the_base_bit_for_bit_for_every_user(tiny: tuple[Path, Path]) -> None:
    """One definition of the base (recurrence, Depth-LoRA and the peft base LoRA off) for the KL anchor and
    for eval's base row alike; eval used to keep the base LoRA on."""
    model = wrapper(tiny[0])
    add_lora(model, Lora(rank=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reference = AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    model.eval()
    ids, _ = batch()
    with torch.no_grad():
        base_logits = reference(ids).logits
        looped = model(ids, n_loops=3).logits
        with model.base_mode():
            anchored = model(ids, n_loops=3).logits
        with row_mode(model, None):
            eval_base_row = model(ids).logits
        after = model(ids, n_loops=3).logits
    assert (looped - base_logits).abs().max().item() > 1e-2
    assert torch.equal(anchored, base_logits) and torch.equal(eval_base_row, base_logits)
    assert torch.equal(after, looped)  # LoRA switched back on afterwards


def test_model_aux_terms_are_added_and_logged() -> None:
    class StandIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(64, 64)

        def forward(self, ids: torch.Tensor, logits_to_keep: torch.Tensor, **kwargs: object) -> object:
            logits = self.emb(ids)
            aux = {"moe_balance": logits.square().mean(), "ponder": torch.tensor(2.0)}
            logits = logits[logits_to_keep]
            return type("Out", (), {"logits": logits, "aux_losses": aux})()

    model = StandIn()
    ids, labels = batch()
    out = Objective(model, Loss(aux_weights={"moe_balance": 0.01}))(ids, labels, Depth(2))
    ce = losses.cross_entropy(model.emb(ids), labels)
    balance = 0.01 * model.emb(ids).square().mean()
    assert abs(out["aux_moe_balance"].item() - balance.item()) < 1e-7
    assert out["aux_ponder"].item() == 2.0
    assert abs(out["loss"].item() - (ce + balance + 2.0).item()) < 1e-5


@pytest.mark.parametrize("kind", ["retrofit", "openmythos"])
def test_the_objective_reads_logits_at_labelled_positions_only(tiny: tuple[Path, Path], kind: str) -> None:
    """The head and the loss run on the labelled positions (the union over the rows): the loss and every gradient
    equal the CE of the full logits (plus the model's own terms, the MoE balance loss of OpenMythos)."""
    if kind == "retrofit":
        model = wrapper(tiny[0])
    else:
        torch.manual_seed(0)
        model = OpenMythosForCausalLM(OpenMythosConfig.from_mythos(tiny_mythos(vocab_size=64)))
    ids, labels = batch()
    labels[:, :7] = losses.IGNORE_INDEX  # 5 labelled positions in row 1, 4 in row 0 (its position 11 left out)
    labels[0, 11] = losses.IGNORE_INDEX
    out = Objective(model, Loss())(ids, labels, Depth(3))
    out["loss"].backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full = model(ids, n_loops=3)
    reference = losses.cross_entropy(logits_of(full), labels) + sum(losses.model_aux_terms(full).values())
    reference.backward()
    assert abs(out["loss"].item() - reference.item()) < 1e-6
    assert len(fast) > 10
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert (fast[name] - p.grad).abs().max().item() < 1e-6, name
    seen = []
    model.register_forward_hook(lambda m, a, kw, o: seen.append((kw["logits_to_keep"], logits_of(o))), with_kwargs=True)
    Objective(model, Loss())(ids, labels, Depth(2))
    assert torch.equal(seen[0][0], losses.valid_mask(labels)) and seen[0][1].shape == (9, 64)


def saved_bytes(model: RetrofitForCausalLM, depth: Depth) -> int:
    ids, labels = batch()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = Objective(model, Loss())(ids, labels, depth)
    out["loss"].backward()
    return total


def test_truncated_backprop_memory_and_gradients(tiny: tuple[Path, Path]) -> None:
    model = wrapper(tiny[0])
    select_trainable(model, validate_recipe(tiny_recipe(tiny[0], tiny[1], Path("unused"))))
    curriculum = lambda loops, k, ckpt: Curriculum(  # noqa: E731
        FixedCurriculum(kind="fixed", loops=loops, grad_loops=k, checkpoint_loops=ckpt), 0
    ).sample(0, 0, 2)
    full4, full8 = saved_bytes(model, curriculum(4, None, False)), saved_bytes(model, curriculum(8, None, False))
    trunc4, trunc8 = saved_bytes(model, curriculum(4, 2, False)), saved_bytes(model, curriculum(8, 2, False))
    ckpt4, ckpt8 = saved_bytes(model, curriculum(4, 2, True)), saved_bytes(model, curriculum(8, 2, True))
    assert full8 > full4 * 1.3  # without truncation, saved activations grow with T
    assert trunc8 == trunc4  # with k = 2 backprop loops they do not depend on T
    assert ckpt8 == ckpt4 < trunc4  # per-loop checkpointing saves less still
    scale = model.recurrence.rule.scale.logit
    model.zero_grad()
    Objective(model, Loss())(*batch(), curriculum(4, 2, False))["loss"].backward()
    grads = scale.grad.abs().sum(-1)
    assert grads[1].item() == 0.0 and grads[2].item() > 0 and grads[3].item() > 0
    model.zero_grad()
    Objective(model, Loss())(*batch(), curriculum(4, None, False))["loss"].backward()
    assert scale.grad.abs().sum(-1)[1].item() > 0


def test_weight_decay_never_reaches_the_recurrence_stability_parameters(tiny: tuple[Path, Path]) -> None:
    """Gate and LayerScale values are stored (n_loops, 1): the old shape rule (ndim >= 2) decayed them, so a
    recipe with weight_decay > 0 pulled LayerScale to 0 and switched the loops off. Now decay follows the kind
    of parameter: only the Depth-LoRA matrices of the recurrence decay."""
    model = wrapper(tiny[0])
    recipe = validate_recipe(tiny_recipe(tiny[0], tiny[1], Path("unused")))
    trainable = select_trainable(model, recipe)
    groups = param_groups(model, trainable, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0.0 for p in g["params"]}
    assert {n for n, p in trainable.items() if id(p) in decayed} == {n for n in trainable if ".lora." in n}
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in trainable)
    scale = model.recurrence.rule.scale.logit
    before = scale.detach().clone()
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for _ in range(20):  # no gradient: only weight decay could move a parameter
        for p in trainable.values():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert torch.equal(scale.detach(), before)


def test_lr_scale_gives_the_named_parameters_their_own_rate_through_the_schedule(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """optim.lr_scale: the gates train at 10 × lr (and the schedule scales them alike), the Depth-LoRA matrices
    keep their decay, every trainable parameter is in one group, a pattern naming nothing is refused."""
    model = wrapper(tiny[0])
    recipe = validate_recipe(tiny_recipe(tiny[0], tiny[1], Path("unused")))
    trainable = select_trainable(model, recipe)
    scales = {"recurrence.rule.gate.*": 10.0, "*.lora.*": 0.5}
    groups = param_groups(model, trainable, 0.1, 2e-3, scales)
    by_lr = {(g.get("lr"), g["weight_decay"]): {n for n, p in trainable.items() if any(p is q for q in g["params"])}
             for g in groups}  # fmt: skip
    assert by_lr[(2e-2, 0.0)] == {"recurrence.rule.gate.value"}
    assert by_lr[(1e-3, 0.1)] == {n for n in trainable if ".lora." in n}
    assert "recurrence.rule.scale.logit" in by_lr[(None, 0.0)]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert [len(g["params"]) for g in param_groups(model, trainable, 0.1)] == [
        len(g["params"]) for g in param_groups(model, trainable, 0.1, 2e-3, {})
    ]
    with pytest.raises(MythicError, match=r"optim.lr_scale: 'recurrence.nothing\*' matches no trainable"):
        param_groups(model, trainable, 0.1, 2e-3, {"recurrence.nothing*": 2.0})

    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["optim"] = {"lr": 1e-3, "schedule": "linear", "warmup_steps": 0, "lr_scale": {"recurrence.rule.gate.*": 10}}
    raw["train"]["steps"] = 4
    training = setup(validate_recipe(raw), default_build)
    rates = []
    for _ in range(2):
        rates.append([g["lr"] for g in training.optimizer.param_groups])
        training.optimizer.step()
        training.scheduler.step()
    for step, row in enumerate(rates):
        assert row[-1] == pytest.approx(10 * 1e-3 * (1 - step / 4)) and row[0] == pytest.approx(1e-3 * (1 - step / 4))


def test_dual_t_obeys_the_curriculum(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["curriculum"] = {
        "kind": "stages",
        "max_loops": 4,
        "stages": [{"start": 0, "weights": {2: 1.0}}, {"start": 2, "weights": {3: 0.5, 4: 0.5}}],
    }
    raw["train"]["steps"] = 4
    recipe = validate_recipe(raw)
    calls: list[object] = []

    def build(r: object, device: torch.device) -> tuple[torch.nn.Module, object]:
        model, tok = default_build(r, device)
        model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("n_loops")), with_kwargs=True)
        return model, tok

    train(recipe, build=build)
    curriculum = Curriculum(recipe.curriculum, recipe.seed)
    expected = []
    for step in range(4):
        for micro in range(2):
            expected += [1, curriculum.sample(step, micro, 2).n_loops] + ([1] if step % 2 == 0 else [])
    assert calls == expected  # T_lo = 1, T_hi from the curriculum, then the base pass on anchor steps
    assert {t for t in calls[:10] if t != 1} == {2} and {t for t in calls[10:] if t != 1} <= {3, 4}


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    full = train(validate_recipe(tiny_recipe(tiny[0], tiny[1], tmp_path / "full")))

    def stop_at_3(done: int, total: int, record: dict) -> None:
        if done == 3:
            raise Interrupt

    partial = validate_recipe(tiny_recipe(tiny[0], tiny[1], tmp_path / "part"))
    with pytest.raises(Interrupt):
        train(partial, on_step=stop_at_3)
    with pytest.raises(MythicError, match="already holds a run: pass --resume"):
        train(partial)
    changed = partial.model_copy(update={"seed": partial.seed + 1})
    with pytest.raises(MythicError, match="--resume: the recipe's seed differs from the run's"):
        train(changed, resume=True)
    saved = tmp_path / "part" / "recipe.yaml"
    assert "  decay_steps: null\n" in saved.read_text()
    saved.write_text(saved.read_text().replace("  decay_steps: null\n", ""))  # as written before the setting existed
    resumed = train(partial, resume=True)
    a = load_file(full.final_dir / "recurrence.safetensors")
    b = load_file(resumed.final_dir / "recurrence.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tmp_path / "full" / "checkpoints" / "step-0000004" / "trainable.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in a)  # training moved the weights after step 4
    ra = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    drop = ("tokens_per_s", "real_tokens_per_s")  # wall-clock rates differ between runs
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == [
        {k: v for k, v in r.items() if k not in drop} for r in rb
    ]


def test_a_saved_recipe_that_no_longer_validates_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    recipe = validate_recipe(tiny_recipe(tiny[0], tiny[1], tmp_path / "run"))
    saved = tmp_path / "recipe.yaml"
    saved.write_text(recipe_to_yaml(recipe).replace("  min_lr_ratio:", "  retired_setting: 1\n  min_lr_ratio:"))
    with pytest.raises(MythicError, match=r"^--resume: the run's recipe .* no longer validates \(.*retired_setting"):
        check_same_recipe(saved, recipe)


def test_non_finite_steps_are_skipped_then_stop(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["train"] = {"steps": 8, "micro_batch": 2, "grad_accum": 1, "max_bad_steps": 2}
    recipe = validate_recipe(raw)
    poison = {"on": False}

    def build(r: object, device: torch.device) -> tuple[torch.nn.Module, object]:
        model, tok = default_build(r, device)

        def hook(module: torch.nn.Module, args: object, out: object) -> object:
            if poison["on"]:
                out.logits = out.logits * float("nan")
            return out

        model.register_forward_hook(hook)
        return model, tok

    bad_steps = {3, 5, 6}  # 1-based: step 3 alone is skipped, 5 and 6 in a row stop the run

    def progress(done: int, total: int, record: dict) -> None:
        poison["on"] = done + 1 in bad_steps

    with pytest.raises(MythicError) as err:
        train(recipe, build=build, on_step=progress)
    message = str(err.value)
    assert message.startswith("2 non-finite steps in a row (loss or gradient), stopped at step 6;")
    assert message.endswith("step-0000004")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [0, 0, 1, 0, 1, 1]
    assert records[-1]["skipped_total"] == 3
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000004"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["skipped_steps"] == 1


def test_run_outputs(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["log"] = {"every": 1, "plot": True}
    raw["loss"]["focal"] = {"gamma": 1.0}
    result = train(validate_recipe(raw))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "ce_lo", "ce_hi", "ce_hi_unweighted", "margin", "lr", "grad_norm", "T", "tokens_per_s"):
        assert all(key in r for r in records), key
    assert [("kl_anchor" in r) for r in records] == [True, False, True, False, True, False]
    assert all("rec/rho_A" in r and "rec/layerscale/1" in r and "ce_T1" in r for r in records)
    assert records[0]["lr"] == 0.01 and records[-1]["tokens"] == records[-1]["real_tokens"] == 2 * 16 * 2  # packed
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-0000004", "step-0000006"]  # keep 2
    loaded = load_checkpoint(result.final_dir)
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-0000006" / "trainable.safetensors")
    assert loaded.recurrence_state_dict().keys() == trained.keys()
    assert all(torch.equal(loaded.recurrence_state_dict()[k], v) for k, v in trained.items())


def test_retrofit_checkpoint_recipe_continues_training(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    first = train(validate_recipe(tiny_recipe(tiny[0], tiny[1], tmp_path / "first")))
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "second")
    raw["model"] = {"kind": "retrofit", "checkpoint": str(first.final_dir)}
    raw["train"]["steps"] = 2
    second = train(validate_recipe(raw))
    before = load_file(first.final_dir / "recurrence.safetensors")
    after = load_file(second.final_dir / "recurrence.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    ckpt = load_file(tmp_path / "second" / "checkpoints" / "step-0000002" / "trainable.safetensors")
    assert all(torch.equal(ckpt[k], after[k]) for k in after)


def test_training_every_base_weight_saves_the_whole_model(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run", trainable={"base": True})
    raw["loss"].pop("kl_anchor")
    raw["train"]["steps"] = 2
    result = train(validate_recipe(raw))
    assert not (result.final_dir / "recurrence.safetensors").exists()
    loaded = RetrofitForCausalLM.from_pretrained(result.final_dir)  # a whole save_pretrained folder
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "trainable.safetensors")
    state = loaded.state_dict()
    assert any(k.startswith("base.") for k in trained) and any(k.startswith("recurrence.") for k in trained)
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    original = AutoModelForCausalLM.from_pretrained(tiny[0]).state_dict()
    assert not torch.equal(
        state["base.model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"]
    )


def test_unknown_surgery_setting_and_missing_tracker(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["model"]["surgery"]["layerscale_int"] = 0.1
    with pytest.raises(MythicError, match=r"^recipe model.surgery.layerscale_int: unknown key"):
        validate_recipe(raw)
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run2", log={"trackers": ["wandb"]})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(MythicError, match=r"^recipe log.trackers: wandb is not installed \(pip install wandb\)$"):
            train(validate_recipe(raw))


def test_tensorboard_tracker_gets_the_logged_records(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run", log={"every": 1, "plot": False, "trackers": ["tensorboard"]})
    raw["train"]["steps"] = 2
    train(validate_recipe(raw))
    events = EventAccumulator(str(tmp_path / "run" / "tiny"))
    events.Reload()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "ce_lo", "ce_hi", "kl_anchor", "rec/rho_A"):
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged == pytest.approx({r["step"]: r[key] for r in records if key in r}, rel=1e-6), key


def test_base_lora_on_moe_experts_trains_and_switches_off(tmp_path: Path) -> None:
    base = tiny_base("qwen3_moe")
    model = RetrofitForCausalLM.from_base(base, block_start=1, block_end=3, max_loops=4)
    raw = tiny_recipe(Path("b"), Path("c"), tmp_path)
    raw["trainable"] = {
        "lora": {"rank": 2, "target_modules": ["q_proj"], "target_parameters": ["mlp.experts.gate_up_proj"]}
    }
    trainable = select_trainable(model, validate_recipe(raw))
    lora = sorted(n for n in trainable if "lora_" in n)
    assert any("experts" in n for n in lora) and any("q_proj" in n for n in lora)
    assert len(trainable) == len(dict(model.recurrence_parameters())) + len(lora)
    with torch.no_grad():
        for name in lora:
            if "lora_B" in name:
                trainable[name].normal_(0, 0.5)
    ids = torch.randint(0, 128, (2, 10))
    model.eval()
    with torch.no_grad():
        reference = tiny_base("qwen3_moe")(ids).logits
        with model.base_mode():
            anchored = model(ids, n_loops=3).logits
        with_lora = model(ids, n_loops=1).logits
    assert torch.equal(anchored, reference)
    assert (with_lora - reference).abs().max().item() > 1e-3


def test_a_lora_only_run_saves_its_untrained_recurrence_and_its_lora(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["trainable"] = {"recurrence": False, "lora": {"rank": 2, "target_modules": ["q_proj", "v_proj"]}}
    raw["train"]["steps"] = 2
    result, model = train_keeping_model(raw)
    loaded = load_checkpoint(result.final_dir).eval()
    ids, _ = batch()
    with torch.no_grad():
        trained = model.eval()(ids, n_loops=2).logits
        assert (loaded(ids, n_loops=2).logits - trained).abs().max().item() == 0.0
        with model.base_mode():
            assert (trained - model(ids).logits).abs().max().item() > 1e-4


def train_keeping_model(raw: dict) -> tuple[TrainResult, torch.nn.Module]:
    """``train`` on the raw recipe, and the model it built (to look inside after training)."""
    models: list[torch.nn.Module] = []

    def build(r: object, device: torch.device) -> tuple[torch.nn.Module, object]:
        model, tok = default_build(r, device)
        models.append(model)
        return model, tok

    return train(validate_recipe(raw), build=build), models[0]


def test_nf4_quantized_base_trains(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run")
    raw["model"]["quantization"] = {"kind": "nf4", "double_quant": True, "compute_dtype": "float32"}
    raw["train"]["steps"] = 2
    result, model = train_keeping_model(raw)
    q_proj = model.base.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.quant_state.quant_type == "nf4"
    assert result.skipped_steps == 0 and 3.5 < result.metrics["loss"] < 5.0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kl_anchor"] >= 0.0 and records[1]["grad_norm"] > 0


def test_per_sequence_depth_is_logged_per_t(tiny: tuple[Path, Path]) -> None:
    model = wrapper(tiny[0])
    ids, labels = batch()
    depth = Depth(torch.tensor([1, 3]), grad_loops=2)
    out = Objective(model, Loss())(ids, labels, depth)
    with torch.no_grad():
        logits = model(ids, n_loops=torch.tensor([1, 3])).logits
        one, three = model(ids[:1], n_loops=1).logits, model(ids[1:], n_loops=3).logits
    assert out["seq_loops"].tolist() == [1, 3]
    assert torch.allclose(out["seq_ce"], row_ce(logits, labels))
    assert abs(out["seq_ce"][0].item() - row_ce(one, labels[:1]).item()) < 1e-5
    assert abs(out["seq_ce"][1].item() - row_ce(three, labels[1:]).item()) < 1e-5


def test_metrics_log_drops_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 4.0}\n{"step": 2, "loss": 3.9}\n{"step": 3, "lo')
    log = MetricsLog(path)
    assert log.read() == [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.9}]
    log.truncate(1)
    assert path.read_text() == '{"step": 1, "loss": 4.0}\n'


def test_openmythos_recipe_trains_with_its_aux_terms(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    make_tokenizer().save_pretrained(tmp_path / "tok")
    config = {
        "vocab_size": 64, "dim": 32, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32, "max_loop_iters": 4,
        "prelude_layers": 1, "coda_layers": 1, "n_experts": 4, "n_shared_experts": 1, "n_experts_per_tok": 2,
        "expert_dim": 16, "lora_rank": 2, "attn_type": "gqa",
    }  # fmt: skip
    raw = tiny_recipe(tiny[0], tiny[1], tmp_path / "run", loss={"aux_weights": {"moe_balance": 0.01, "ponder": 0.001}})
    raw["model"] = {"kind": "openmythos", "config": config, "tokenizer": str(tmp_path / "tok")}
    raw["train"]["steps"] = 3
    result = train(validate_recipe(raw))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["aux_moe_balance"] > 0 and r["aux_ponder"] > 0 and any(k.startswith("router/") for k in r)
        assert abs(r["loss"] - (r["ce"] + r["aux_moe_balance"] + r["aux_ponder"])) < 1e-5
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-0000003" / "trainable.safetensors")
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items() if k in state)
    raw["model"]["config"]["dimm"] = 3
    with pytest.raises(MythicError, match=r"^recipe model.config.dimm: unknown key"):
        validate_recipe(raw | {"out_dir": str(tmp_path / "run2")})


def test_a_4bit_moe_base_has_its_experts_quantised_as_sanity_estimates(tmp_path: Path) -> None:
    from tiny import save_tiny_base

    from mythic.quant import quantizable, skeleton, unquantized_parameters

    base_dir = tmp_path / "moe"
    save_tiny_base(base_dir, "qwen3_moe")
    raw = tiny_recipe(base_dir, write_corpus(tmp_path / "corpus"), tmp_path / "run")
    raw["model"]["quantization"] = {"kind": "nf4", "double_quant": True, "compute_dtype": "float32"}
    raw["data"]["tokenizer"] = str(base_dir)
    raw["train"]["steps"] = 2
    result, model = train_keeping_model(raw)
    base = model.base
    assert not [g for g in unquantized_parameters(base) if g["why"].startswith("3-D")]

    def unwrapped(name: str) -> str:  # the looped block's layers sit in a BlockSlot (``.layer``)
        return re.sub(r"\.layers\.(\d+)\.layer\.", r".layers.\1.", name)

    linear = {unwrapped(n) for n, p in base.named_parameters() if type(p).__name__ == "Params4bit"}
    cubes = {
        unwrapped(n.replace(".parametrizations.", ".").removesuffix(".original"))
        for n, _ in base.named_parameters()
        if ".parametrizations." in n
    }
    expected_linear, expected_cubes = quantizable(skeleton(AutoModelForCausalLM.from_pretrained(base_dir).config))
    assert (linear, cubes) == (expected_linear, expected_cubes), "train quantises what sanity estimates"
    assert len(cubes) == 6 * 2, "gate_up_proj and down_proj of the experts of 6 layers"
    assert result.skipped_steps == 0 and math.isfinite(result.metrics["loss"])
