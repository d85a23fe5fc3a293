"""Data-parallel training: `torchrun --standalone --nproc_per_node=2 -m minideeplab train` on the CPU (gloo)
is the single-process run with the same config (the same global batch), up to float rounding; its
checkpoints are the single-process ones; a run resumes across process counts; torch's SyncBatchNorm still
refuses the CPU (the reason for CPUSyncBatchNorm), which matches BatchNorm2d in one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minideeplab import train as T
from minideeplab.cli import main
from minideeplab.training import loop as L
from minideeplab.training import torch_backend as TB

from helpers import interrupt_at

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "synthetic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 8 images of 64x64 in global batches of 4: 2 epochs of 2 iterations, an evaluation on 3 val images after
# each (3: rank 0 scores two, rank 1 one). No dropout: the processes draw their own masks. float64: the two
# programs sum in different orders, and in float32 a fresh model amplifies that rounding (at lr 1e-2 ~20x per
# iteration: two single-process runs, one with 2 threads, differ by 1.4e-3 in the 4th loss); at lr 1e-3 they
# differed by one ulp on one data set and, where a ReLU input sat within rounding of 0, by 2.1e-5 (parameters
# 2.8e-2 of their update) on another. In float64 the same run agrees to 1e-13 (measured on both).
CONFIG = dict(model="v3plus", backbone="mini", data_root=str(DATA), epochs=2, batch_size=4, crop_size=64, lr=1e-3,
              train_images=8, val_images=3, model_options={"dropout": 0.0}, dtype="float64")
FLAGS = ["--data-root", str(DATA), "--epochs", "2", "--batch-size", "4", "--crop-size", "64", "--lr", "0.001",
         "--train-images", "8", "--val-images", "3", "--model-option", "dropout=0.0", "--dtype", "float64"]


def torchrun(out, *flags):
    """`torchrun --standalone --nproc_per_node=2 -m minideeplab train --out OUT FLAGS`, one thread each."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "minideeplab", "train", "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread):
    """(the two-process run's completed process and last.pt, the single-process run's checkpoint)."""
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(out, *FLAGS)
    assert done.returncode == 0, done.stdout + done.stderr
    single = T.train(T.TrainConfig(**CONFIG, out=str(tmp_path_factory.mktemp("single"))), quiet=True,
                     log=lambda *a: None)
    return done, torch.load(out / "last.pt", weights_only=True), single


def differences(a: dict, b: dict, init: dict) -> tuple[float, float]:
    """(|a - b| / |b - init| over all parameters (2-norms: the difference relative to the training's update),
    max over the running statistics of max |a - b| / max |b|)."""
    params = [k for k in b if b[k].is_floating_point() and "running_" not in k]
    d = torch.cat([(a[k].double() - b[k].double()).ravel() for k in params])
    update = torch.cat([(b[k].double() - init[k].double()).ravel() for k in params])
    stats = max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b if "running_" in k)
    return (d.norm() / update.norm()).item(), stats


def test_two_processes_make_the_single_process_run(runs):
    """Same per-iteration loss and final weights, in float64. Measured on this machine: losses equal to
    6.7e-16, parameters to 1.1e-13 of their update, running statistics to 1.1e-14. Tolerances 1e-12, 1e-9,
    1e-10. Plausible bugs sit far outside (measured, float64): per-process batch norm (BatchNorm2d left
    unsynchronised) moves the losses by 4.8e-3 and the parameters by 1.0 of their update; each process's loss
    the mean over its own labelled pixels (the shards hold different numbers) by 2.4e-4 and 0.14."""
    _, ddp, single = runs
    assert ddp["world_size"] == 2 and len(ddp["rng"]["ranks"]) == 2
    assert ddp["config"] == {**single["config"], "out": ddp["config"]["out"]}
    assert len(ddp["losses"]) == len(single["losses"]) == ddp["iteration"] == 4
    assert ddp["model"]["classifier.weight"].dtype == single["model"]["classifier.weight"].dtype == torch.float64
    worst = max(abs(a - b) for a, b in zip(ddp["losses"], single["losses"]))
    assert worst <= 1e-12, (ddp["losses"], single["losses"])

    assert ddp["model"].keys() == single["model"].keys()
    torch.manual_seed(0)
    init = T.build(T.TrainConfig(**CONFIG), len(single["classes"])).state_dict()
    params, stats = differences(ddp["model"], single["model"], init)
    assert params <= 1e-9, f"parameters differ by {params:.2e} of their update"
    assert stats <= 1e-10, f"running statistics differ by {stats:.2e}"
    # rank 1's dropout draws are its own (rank 0's continue the single-process stream)
    assert not torch.equal(ddp["rng"]["ranks"][0]["torch"], ddp["rng"]["ranks"][1]["torch"])


def test_evaluation_is_split_over_the_processes_and_summed(runs):
    """Rank 0 scores val images 0 and 2, rank 1 image 1; the summed confusion matrices give the
    single-process scores (float64: equal, measured; in float32 a few pixels' argmax flipped, 4e-5 in pixel
    accuracy; rank 1's image left out moves the scores by 1.1e-2)."""
    _, ddp, single = runs
    for d, s in zip(ddp["metrics"], single["metrics"]):
        assert d["images"] == s["images"] == 3
        assert d["pixel_accuracy"] == pytest.approx(s["pixel_accuracy"], abs=1e-12)
        assert d["miou"] == pytest.approx(s["miou"], abs=1e-12)
        assert d["trimap_accuracy"] == pytest.approx(s["trimap_accuracy"], abs=1e-12)


def test_only_rank_0_logs_and_its_checkpoints_load_as_single_process_ones(runs):
    done, ddp, single = runs
    assert done.stdout.count("epoch 1/2 ") == 1 and done.stdout.count("checkpoint: ") == 1, done.stdout
    out = Path(ddp["config"]["out"])
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["metrics"][-1]["miou"] == max(r["miou"] for r in ddp["metrics"])
    model, classes = T.load_model(out / "last.pt")
    assert classes == single["classes"] and model.state_dict().keys() == single["model"].keys()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--images", "1", "--json", "--quiet"]) == 0


def test_a_single_process_run_resumes_with_two_processes(runs, tmp_path, monkeypatch):
    """Interrupted after epoch 1 (iteration 2), resumed by torchrun: the single-process run's end, within the
    tolerances of the first test."""
    _, _, single = runs
    with monkeypatch.context() as m:
        interrupt_at(m, L, 2)
        with pytest.raises(KeyboardInterrupt):
            T.train(T.TrainConfig(**CONFIG, out=str(tmp_path)), quiet=True, log=lambda *a: None)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 2
    done = torchrun(tmp_path, *FLAGS, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout and "written by 1 processes, now 2" in done.stdout, done.stdout
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["iteration"] == 4 and resumed["world_size"] == 2
    assert resumed["losses"][:2] == single["losses"][:2]  # the single-process part, kept
    assert max(abs(a - b) for a, b in zip(resumed["losses"], single["losses"])) <= 1e-12
    torch.manual_seed(0)
    init = T.build(T.TrainConfig(**CONFIG), len(single["classes"])).state_dict()
    params, stats = differences(resumed["model"], single["model"], init)
    assert params <= 1e-9 and stats <= 1e-10, (params, stats)


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path, monkeypatch, capsys):
    """Checked before any process group exists, so torchrun's environment is enough to see it (a real
    torchrun prints it once per process and fails)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--data-root", str(DATA), "--out", str(tmp_path), "--batch-size", "5", "--quiet"]) == 2
    assert ("minideeplab train (rank 0): error: batch_size (--batch-size) is the global batch, split over the 2 "
            "processes: it must be a multiple of 2, got 5 (e.g. 4 or 6)") in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"a multiple of 4, got 2 \(e.g. 4\)"):
        T.train(T.TrainConfig(**{**CONFIG, "batch_size": 2}, out=str(tmp_path)), quiet=True)


def test_the_numpy_backend_refuses_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--data-root", str(DATA), "--backend", "scratch", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "minideeplab train (rank 1): error: --backend scratch: the NumPy trainer runs in one process" in err
    assert "WORLD_SIZE is 2" in err


# ---------------------------------------------------------------- batch norm over processes


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process (the collectives are identities)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_torch_has_no_cpu_sync_batchnorm(one_process_group):
    """The finding behind CPUSyncBatchNorm (torch 2.14.1). If this fails, torch has gained one: use it."""
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
        torch.nn.SyncBatchNorm(3)(x)
    with pytest.raises(NotImplementedError, match="batch_norm_stats"):
        torch.batch_norm_stats(x, 1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cpu_sync_batchnorm_is_batchnorm_in_one_process(one_process_group, momentum):
    """Output, input and parameter gradients, running statistics (unbiased variance; momentum None: the
    cumulative average) equal BatchNorm2d's, float64, two steps; eval mode uses the running statistics."""
    g = torch.Generator().manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.normal_(generator=g)
    sync = TB._sync_batchnorm(torch.nn.Sequential(bn), "cpu")[0]
    ref = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    ref.load_state_dict(bn.state_dict())
    assert type(sync) is T.CPUSyncBatchNorm and sync.state_dict().keys() == ref.state_dict().keys()
    for _ in range(2):
        x = (3 * torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64) + 2).requires_grad_()
        w = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)
        outs = []
        for m in (sync, ref):
            m.zero_grad()
            x.grad = None
            y = m(x)
            (y * w).sum().backward()
            outs.append((y.detach(), x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone()))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(sync.state_dict()[k], v, rtol=1e-12, atol=0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sync.eval()(x), ref.eval()(x), rtol=1e-12, atol=1e-12)
