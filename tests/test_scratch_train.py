"""The NumPy trainer (minideeplab.training.numpy_backend) against the torch trainer (minideeplab.train, run itself):
the same losses from the same weights, batches and dropout masks; a resumed run bit-identical to an
uninterrupted one; checkpoints the torch tools load; clear errors for what it does not do."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minideeplab import train as T
from minideeplab.cli import main
from minideeplab.data.voc import VOCSegmentation
from minideeplab.reference import deeplab as ref
from minideeplab.reference.aspp import set_dropout_masks
from minideeplab.scratch import deeplab as scratch
from minideeplab.training import loop as L
from minideeplab.training import numpy_backend as S

from helpers import interrupt_at, rel

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet_log(*_):
    pass


def issue_run(out, **kw):
    """The comparison of the issue: mini v3+ (dropout 0.5 after the ASPP), 64x64 crops, batch 4, one epoch of
    20 iterations; lr, momentum and weight decay the defaults unless given."""
    base = dict(model="v3plus", backbone="mini", data_root=str(DATA), out=str(out), epochs=1, batch_size=4,
                crop_size=64, train_images=80, eval_every=0, seed=0)
    return T.TrainConfig(**{**base, **kw})


def tiny(out, **kw):
    """A few iterations on a few images, checkpoints every 2 iterations (3 per epoch: mid-epoch ones)."""
    base = dict(model="v3plus", backbone="mini", data_root=str(DATA), out=str(out), epochs=2, batch_size=2,
                crop_size=64, train_images=6, eval_every=0, checkpoint_every=2, seed=0)
    return T.TrainConfig(**{**base, **kw})


def numpy_run(config, monkeypatch):
    """The NumPy trainer -> (its checkpoint, the dropout masks of each iteration)."""
    masks, forward = [], scratch.DeepLab.forward

    def recording(self, x):
        logits, cache = forward(self, x)
        masks.append(cache.masks)
        return logits, cache

    with monkeypatch.context() as m:
        m.setattr(scratch.DeepLab, "forward", recording)
        return S.train(config, quiet=True, log=quiet_log), masks


def torch_run(config, monkeypatch, masks, perturb=0.0):
    """``minideeplab.train.train`` itself, its model's dropouts replaying ``masks`` (one dict per iteration, in
    order); perturb > 0: the initial weights times 1 + perturb * N(0, 1)."""
    build, queue = T.build, iter(masks)

    def replay(module, _):
        set_dropout_masks(module, next(queue))

    def replaying(*args):
        model = build(*args)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in model.parameters() if perturb else ():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
        model.register_forward_pre_hook(replay)
        return model

    with monkeypatch.context() as m:
        m.setattr(T, "build", replaying)
        return T.train(config, quiet=True, log=quiet_log)


def step_errors(ours, theirs):
    ours, theirs = np.array(ours), np.array(theirs)
    assert ours.shape == theirs.shape == (20,)
    return np.abs(ours - theirs) / np.abs(theirs)


def test_20_losses_match_the_torch_trainer_in_float64(tmp_path, monkeypatch):
    """Float64, lr 0.001: the 20 losses within 1e-12 of the torch trainer's (measured <= 1.2e-14 on seeds
    0, 1, 2), and the weights, batch norm statistics and momentum buffers after them within 1e-10 of their
    max (measured <= 2.2e-12): the same init, data, dropout masks, loss, backward, schedule and update.

    lr 0.001, not the default 0.01: at 0.01 the training itself amplifies any difference by orders of
    magnitude in a few steps (ours, float64, its initial weights perturbed by 1e-12: 1e-12 at step 4, 5e-5 at
    step 8, 5e-3 at step 9), so float64 rounding (1e-16) reaches 1e-4 by step 10-11 and 4e-2 by step 20
    (ours against torch, seeds 0 and 1). At 0.001 the same perturbation stays below 1e-12 for 20 steps."""
    ours, masks = numpy_run(issue_run(tmp_path / "numpy", lr=0.001, dtype="float64"), monkeypatch)
    theirs = torch_run(issue_run(tmp_path / "torch", lr=0.001, dtype="float64"), monkeypatch, masks)
    assert len(masks) == 20 and all(masks), "dropout ran in every iteration"
    err = step_errors(ours["losses"], theirs["losses"])
    assert err.max() <= 1e-12, f"step {err.argmax() + 1}: relative difference {err.max():.2e}; all: {err}"
    assert ours["model"].keys() == theirs["model"].keys()
    for k, v in theirs["model"].items():
        assert ours["model"][k].dtype == v.dtype, k
        assert rel(ours["model"][k].numpy(), v.numpy()) <= 1e-10, k
    mine, torchs = ours["optimizer"]["state"], theirs["optimizer"]["state"]
    assert mine.keys() == torchs.keys()
    for i, s in torchs.items():
        assert rel(mine[i]["momentum_buffer"].numpy(), s["momentum_buffer"].numpy()) <= 1e-10, i


def test_20_losses_in_float32_at_the_default_lr(tmp_path, monkeypatch):
    """The issue's comparison as stated, float32 at the default lr 0.01: 20 losses within 1e-4 relative of
    the torch trainer's. Not met, and not within any float32 trainer's reach, so this test asserts what holds:

    - the first loss (no update yet) within 1e-6 and the second within 1e-4 (measured on seeds 0, 1, 2:
      <= 6e-8 and <= 2e-5); from step 3 or 4 on they part by 2e-4 to 3e-3, by 5e-2 to 7e-2 at most;
    - torch against itself, its initial weights perturbed by float32's rounding (1e-7), parts past 1e-4 within
      the 20 steps too (measured: from step 3 to 5 on, 4e-2 to 7e-2 at most, on seed 1 step for step as ours
      parts from torch), and ours parts from torch no more than 10x as far.

    Why: a difference the size of float32's rounding crosses kinks (ReLU inputs near 0, max-pool near-ties: a
    gradient that flows or not) that a smaller one does not. Measured, ours in float64 at lr 0.001, its initial
    weights perturbed: by 1e-9, the losses move by ~1e-10 over the 20 steps; by 1e-7, by 2e-6 at step 2 and
    1e-3 by step 8. At lr 0.01 the training amplifies that further (the float64 test's docstring). Float64 at
    lr 0.001 meets the issue's target with room: that test.
    """
    ours, masks = numpy_run(issue_run(tmp_path / "numpy"), monkeypatch)
    theirs = torch_run(issue_run(tmp_path / "torch"), monkeypatch, masks)
    itself = torch_run(issue_run(tmp_path / "perturbed"), monkeypatch, masks, perturb=1e-7)
    err = step_errors(ours["losses"], theirs["losses"])
    chaos = step_errors(itself["losses"], theirs["losses"])
    assert err[0] <= 1e-6 and err[1] <= 1e-4, f"the first two steps differ by {err[:2]}"
    assert chaos.max() > 1e-4, (f"torch against itself perturbed by 1e-7 stays within {chaos.max():.1e} over 20 "
                                f"steps: the issue's 1e-4 target may now be met in float32; tighten this test")
    assert err.max() <= 10 * chaos.max(), (f"ours parts from torch by {err.max():.1e}, torch from itself by "
                                           f"{chaos.max():.1e}")


def test_train_step_with_an_aux_head_matches_torch():
    """v3 with torchvision's aux head: train_step's loss is out + 0.5 aux and its update torch's, float64."""
    model = scratch.build_model("v3", "mini", num_classes=4, aux=True, rng=np.random.default_rng(0),
                                dtype=np.float64).train()
    model.rng = np.random.default_rng(1)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 3, 33, 33)), rng.integers(0, 4, (2, 33, 33))
    y[:, :4] = 255
    twin = ref.to_torch(model)
    masks, forward = [], model.forward

    def recording(inp):
        logits, cache = forward(inp)
        masks.append(cache.masks)
        return logits, cache

    model.forward = recording
    loss = S.train_step(model, x, y, 0.01, 0.9, 1e-4, {})
    assert "aux_classifier.3" in masks[0]

    set_dropout_masks(twin, masks[0])
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    result = twin(torch.from_numpy(x))
    target = torch.from_numpy(y)
    tloss = (torch.nn.functional.cross_entropy(result["out"], target, ignore_index=255)
             + 0.5 * torch.nn.functional.cross_entropy(result["aux"], target, ignore_index=255))
    tloss.backward()
    opt.step()
    assert abs(loss - tloss.item()) <= 1e-12 * tloss.item()
    state = twin.state_dict()
    for k in ("aux_classifier.4.weight", "aux_classifier.0.weight", "backbone.layer3.1.conv2.weight",
              "classifier.4.weight"):
        assert rel(model.params[k], state[k].numpy()) <= 1e-10, k


def test_resume_reaches_the_uninterrupted_weights_bit_for_bit(tmp_path, monkeypatch):
    """2 epochs of 3 iterations, checkpoints every 2: interrupted before iteration 5 (last checkpoint:
    iteration 4, mid-epoch 2), then resumed: weights, batch norm statistics, momentum buffers and losses
    equal an uninterrupted run's bit for bit (the resumed iterations redraw the same dropout masks)."""
    whole = S.train(tiny(tmp_path / "whole"), quiet=True, log=quiet_log)
    config = tiny(tmp_path / "cut")
    with monkeypatch.context() as m:
        interrupt_at(m, L, 5)
        with pytest.raises(KeyboardInterrupt):
            S.train(config, quiet=True, log=quiet_log)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["iteration"] == 4
    with pytest.raises(ValueError, match=r"dtype='float32' \(now 'float64'\)"):
        S.train(tiny(tmp_path / "cut", dtype="float64"), resume=True, quiet=True, log=quiet_log)
    lines = []
    resumed = S.train(config, resume=True, quiet=True, log=lines.append)
    assert "at iteration 4/6" in lines[0]
    assert resumed["iteration"] == whole["iteration"] == 6
    assert whole["model"].keys() == resumed["model"].keys()
    differ = [k for k in whole["model"] if not torch.equal(whole["model"][k], resumed["model"][k])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:3]}"
    assert whole["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for k, s in whole["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"]), k
    assert whole["losses"] == resumed["losses"] and len(whole["losses"]) == 6
    assert [r["losses"] for r in resumed["metrics"]] == [whole["losses"][:3], whole["losses"][3:]]


def test_best_checkpoint_by_the_torch_trainers_rule(tmp_path, monkeypatch):
    """One rule for both trainers (``training.loop.best_miou``): evaluations scoring nan, 0.5, 0.3, then,
    resumed, 0.4, 0.6: best.pt after the 0.5 and the 0.6 (nan, no class seen, is no best; the resumed run's
    best so far is the history's 0.5, not its first record's nan)."""
    mious = iter([float("nan"), 0.5, 0.3, 0.4, 0.6])
    monkeypatch.setattr(L, "_evaluate_shared", lambda model, dataset, *_: {"miou": next(mious), "images": 2})
    config = tiny(tmp_path, epochs=5, train_images=2, checkpoint_every=0, eval_every=1)
    lines = []
    with monkeypatch.context() as m:
        interrupt_at(m, L, 3)
        with pytest.raises(KeyboardInterrupt):
            S.train(config, quiet=True, log=lines.append)
    final = S.train(config, resume=True, quiet=True, log=lines.append)
    epochs = [line for line in lines if line.startswith("epoch")]
    assert [line.endswith("(best)") for line in epochs] == [False, True, False, False, True], epochs
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["iteration"] == final["iteration"] == 5 and best["metrics"][-1]["miou"] == 0.6


def test_checkpoint_loads_in_the_torch_tools(tmp_path, capsys):
    """A NumPy run with an evaluation (in NumPy): last.pt and best.pt; load_model gives a torch twin holding
    exactly its weights, torch.optim.SGD loads its optimizer state, and `minideeplab eval --checkpoint`
    scores it as the NumPy evaluation did (measured: the two images' class probabilities agree to 4.5e-8, the
    closest top-2 gap is 1e-6, so no argmax differs; a near-tie there would show as a tiny mIoU difference)."""
    ckpt = S.train(tiny(tmp_path, epochs=1, train_images=4, checkpoint_every=0, eval_every=1, val_images=2),
                   quiet=True, log=quiet_log)
    path = tmp_path / "last.pt"
    saved = torch.load(path, weights_only=True)
    assert (tmp_path / "best.pt").is_file() and saved["iteration"] == ckpt["iteration"] == 2
    assert saved["format"] == T.CHECKPOINT_FORMAT and saved["classes"] == list(VOCSegmentation(DATA).classes)
    record = saved["metrics"][0]
    assert record["images"] == 2 and 0 <= record["miou"] <= 1 and len(saved["losses"]) == 2

    model, classes = T.load_model(path)
    assert classes == saved["classes"] and model.state_dict().keys() == saved["model"].keys()
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt.load_state_dict(saved["optimizer"])
    params = dict(model.named_parameters())
    names = list(params)
    assert len(saved["optimizer"]["state"]) == len(names)
    for i, s in saved["optimizer"]["state"].items():
        assert torch.equal(opt.state[params[names[i]]]["momentum_buffer"], s["momentum_buffer"])

    assert main(["eval", "--checkpoint", str(path), "--images", "2", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 2 and abs(scores["miou"] - record["miou"]) <= 1e-6
    assert abs(scores["pixel_accuracy"] - record["pixel_accuracy"]) <= 1e-6


def test_unsupported_configs_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"NumPy trainer runs on the CPU, got device 'cuda' \(--device\)"):
        S.train(tiny(tmp_path, device="cuda"), quiet=True, log=quiet_log)
    with pytest.raises(ValueError, match="batch_size 8 is larger than the 6 training images"):
        S.train(tiny(tmp_path, batch_size=8), quiet=True, log=quiet_log)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "last.pt")):
        S.train(tiny(tmp_path), resume=True, quiet=True, log=quiet_log)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="runs in one process, got WORLD_SIZE 2"):
        S.train(tiny(tmp_path), quiet=True, log=quiet_log)
    assert not (tmp_path / "last.pt").exists()


def test_adamw_with_warm_up_matches_the_torch_trainer_in_float64(tmp_path, monkeypatch):
    """The transformers' recipe (TrainConfig optimizer "adamw", warmup_iters): the NumPy trainer's 20 losses and
    final weights against the torch trainer's (torch.optim.AdamW), float64, and its checkpoint's moments and step
    counts as torch's."""
    kw = dict(lr=1e-4, optimizer="adamw", weight_decay=0.05, warmup_iters=8, dtype="float64")
    ours, masks = numpy_run(issue_run(tmp_path / "numpy", **kw), monkeypatch)
    theirs = torch_run(issue_run(tmp_path / "torch", **kw), monkeypatch, masks)
    err = step_errors(ours["losses"], theirs["losses"])
    assert err.max() <= 1e-12, f"step {err.argmax() + 1}: relative difference {err.max():.2e}; all: {err}"
    for k, v in theirs["model"].items():
        assert rel(ours["model"][k].numpy(), v.numpy()) <= 1e-10, k
    mine, torchs = ours["optimizer"]["state"], theirs["optimizer"]["state"]
    assert mine.keys() == torchs.keys()
    for i, s in torchs.items():
        assert float(mine[i]["step"]) == float(s["step"]) == 20, i
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel(mine[i][key].numpy(), s[key].numpy()) <= 1e-10, (i, key)
    assert ours["optimizer"]["param_groups"][0].keys() == theirs["optimizer"]["param_groups"][0].keys()


def test_adamw_resumes_bit_for_bit_and_either_trainer_resumes_the_other(tmp_path, monkeypatch):
    """AdamW, interrupted mid-epoch (checkpoint at iteration 4) and resumed: the uninterrupted run's weights,
    moments and losses bit for bit; the torch trainer resumes the NumPy trainer's last.pt (its optimizer state
    in torch's layout) and goes on from iteration 4."""
    config = tiny(tmp_path / "cut", optimizer="adamw", lr=1e-3, warmup_iters=3)
    whole = S.train(tiny(tmp_path / "whole", optimizer="adamw", lr=1e-3, warmup_iters=3), quiet=True, log=quiet_log)
    with monkeypatch.context() as m:
        interrupt_at(m, L, 5)
        with pytest.raises(KeyboardInterrupt):
            S.train(config, quiet=True, log=quiet_log)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    resumed = S.train(config, resume=True, quiet=True, log=quiet_log)
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    for k, s in whole["optimizer"]["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s[key], resumed["optimizer"]["state"][k][key]), (k, key)
    assert whole["losses"] == resumed["losses"]

    other = tmp_path / "torch"
    other.mkdir()
    torch.save(cut, other / "last.pt")
    lines = []
    by_torch = T.train(tiny(other, optimizer="adamw", lr=1e-3, warmup_iters=3), resume=True, quiet=True,
                       log=lines.append)
    assert "at iteration 4/6" in lines[0] and by_torch["iteration"] == 6
    assert all(float(s["step"]) == 6 for s in by_torch["optimizer"]["state"].values())
    with pytest.raises(ValueError, match=r"optimizer='adamw' \(now 'sgd'\)"):
        S.train(tiny(tmp_path / "cut"), resume=True, quiet=True, log=quiet_log)


def test_the_warm_up_and_the_optimizer_option():
    """scheduled_lr: poly times (iteration + 1) / warmup_iters over the warm-up, poly alone after and without;
    a bad optimizer or warm-up is refused naming the option."""
    config = T.TrainConfig(lr=0.1, warmup_iters=4)
    lrs = [L.scheduled_lr(config, i, 10) for i in range(10)]
    poly = [L.poly_lr(0.1, i, 10) for i in range(10)]
    assert lrs[:4] == pytest.approx([poly[i] * (i + 1) / 4 for i in range(4)], rel=1e-15)
    assert lrs[3] == poly[3] and lrs[4:] == poly[4:] and 0 < lrs[0] < lrs[1] < lrs[2]
    assert [L.scheduled_lr(T.TrainConfig(lr=0.1), i, 10) for i in range(10)] == poly
    with pytest.raises(ValueError, match=r"optimizer \(--optimizer\) must be one of 'sgd', 'adamw', got 'adam'"):
        T.TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match=r"warmup_iters \(--warmup-iters\) must be an int >= 0, got -1"):
        T.TrainConfig(warmup_iters=-1)
