"""The ``minideeplab`` command line (also ``python -m minideeplab``).

Sub-commands import their modules lazily so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _course_build(args) -> int:
    from minideeplab.grading.build import build_course

    return build_course(Path(args.solutions), Path(args.course), force=args.force, check=args.check)


def _course_tidy(args) -> int:
    from minideeplab.grading.build import tidy_solutions

    return tidy_solutions(Path(args.solutions))


def _grade(args) -> int:
    from minideeplab.grading.grade import grade_notebooks

    return grade_notebooks([Path(p) for p in args.notebooks], timeout=args.timeout, output=args.output)


def _precompile(args) -> int:
    import compileall

    from minideeplab.scratch.precompile import precompile

    # The bytecode too: in a fresh clone the first import of the checks and the twins compiled them (1.5 s).
    compileall.compile_dir(str(Path(__file__).parent), quiet=2)
    precompile(quiet=args.quiet)
    return 0


def _errors_to_exit(fn):
    """Run a sub-command; a bad argument or a missing file becomes one line on stderr and exit status 2
    (naming the process under torchrun)."""
    def run(args) -> int:
        import os
        import sys

        try:
            return fn(args)
        except (ValueError, FileNotFoundError) as e:
            who = f" (rank {os.environ.get('RANK', '?')})" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
            print(f"minideeplab {args.command}{who}: error: {e}", file=sys.stderr)
            return 2
    return run


@_errors_to_exit
def _bench(args) -> int:
    import importlib

    run = importlib.import_module(f"minideeplab.bench.{args.bench_command}").run
    own = ("backward", "window", "crf", "depthwise", "size")  # a suite's own options
    options = {k: getattr(args, k) for k in own if hasattr(args, k)}
    return run(threads=args.threads, repeat=args.repeat, as_json=args.json, quick=args.quick, **options)


def _train_config(args):
    from minideeplab.train import TrainConfig

    options = {}
    for key, value in args.model_option or []:
        if key in options:
            raise ValueError(f"--model-option {key} is given twice ({options[key]!r} and {value!r})")
        options[key] = value
    out = args.out or f"runs/{args.model}_{args.backbone}"
    return TrainConfig(model=args.model, backbone=args.backbone, output_stride=args.output_stride,
                       data_root=args.data_root, train_split=args.train_split, val_split=args.val_split,
                       val_root=args.val_root, out=out, epochs=args.epochs, batch_size=args.batch_size,
                       crop_size=args.crop_size, scale_range=tuple(args.scale_range), lr=args.lr,
                       momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                       eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                       train_images=args.train_images, val_images=args.val_images, num_workers=args.workers,
                       device=_device(args.device), model_options=options, dtype=args.dtype,
                       init_from=args.init_from, optimizer=args.optimizer, warmup_iters=args.warmup_iters)


def _model_option(text):
    """"KEY=VALUE" -> (KEY, VALUE parsed as a Python literal)."""
    import ast

    key, eq, value = text.partition("=")
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. image_pooling=False, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"{key}: the value must be a Python literal (False, 256, 0.1, \"(6, 12, 18)\", \"'smp'\" with the "
            f"quotes for a string), got {value!r}") from None


def _device(name):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here; use --device cpu")
    return name


@_errors_to_exit
def _train(args) -> int:
    import math
    import os

    from minideeplab.training.loop import best_miou

    config = _train_config(args)
    for flag, root in (("--data-root", config.data_root), ("--val-root", config.val_root),
                       ("--init-from", config.init_from)):
        if root is not None and not Path(root).exists():
            raise FileNotFoundError(f"{flag} {root} does not exist")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.backend == "scratch":
        if world > 1:
            raise ValueError(f"--backend scratch: the NumPy trainer runs in one process; launch it without "
                             f"torchrun (WORLD_SIZE is {world})")
        from minideeplab.training.numpy_backend import train
    else:
        from minideeplab.train import train
    ckpt = train(config, resume=args.resume, quiet=args.quiet, log=print)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"checkpoint: {Path(config.out) / 'last.pt'} (iteration {ckpt['iteration']})")
        best = best_miou(ckpt.get("metrics", []))
        if math.isfinite(best) and (Path(config.out) / "best.pt").exists():
            print(f"best: {Path(config.out) / 'best.pt'} (val mIoU {best:.4f})")
    return 0


def _json_safe(x):
    """nan -> None, recursively (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and x != x else x


@_errors_to_exit
def _eval(args) -> int:
    import json

    from minideeplab.train import FirstN, evaluate, load_checkpoint, load_model, open_split

    device = _device(args.device)
    model, classes = load_model(args.checkpoint, device)
    config = load_checkpoint(args.checkpoint)["config"]
    root = args.data_root or config.get("val_root") or config["data_root"]
    what = "--data-root" if args.data_root else "val root" if config.get("val_root") else "data root"
    data = open_split(root, args.split or config["val_split"], what)
    if list(data.classes) != classes:
        raise ValueError(f"--data-root {root} has classes {list(data.classes)} but {args.checkpoint} was trained "
                         f"on {classes}")
    widths = tuple(int(w) if w == int(w) else w for w in args.trimap_widths)  # keys "2", not "2.0"
    result = evaluate(model, FirstN(data, args.images), classes, scales=tuple(args.scales), flip=args.flip,
                      widths=widths, device=device, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(_json_safe(result)))
        return 0
    print(f"{result['images']} images of {data.root} ({data.split}), scales {args.scales}, flip {args.flip}")
    print(f"mIoU {result['miou']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}  "
          f"mean accuracy {result['mean_accuracy']:.4f}")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:<16} IoU {iou:.4f}")
    print("trimap accuracy: " + "  ".join(f"{w}px {a:.4f}" for w, a in result["trimap_accuracy"].items()))
    return 0


@_errors_to_exit
def _export(args) -> int:
    from minideeplab.train import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, weights in {args.dtype})")
    return 0


@_errors_to_exit
def _segment(args) -> int:
    from minideeplab.training.evaluation import NumpyModel
    from minideeplab.train import load_model, segment

    device = _device(args.device)
    if (args.checkpoint is None) == (args.weights is None):
        raise ValueError("segment: give --checkpoint or --weights (one of them)")
    resize = None
    if args.weights is not None:
        from minideeplab.pretrained import RESIZE, load_torchvision

        arch, path = _weights_source(args.weights, args.arch)
        model, classes = load_torchvision(arch, path, "torch")
        model = model.to(device)
        resize, what = RESIZE, f"torchvision's {arch} (COCO, the 20 VOC classes)"
    else:
        model, classes = load_model(args.checkpoint, device)
        what = f"{args.checkpoint}"
        if args.crf and getattr(getattr(model, "config", None), "crf", None) is not None:
            raise ValueError(f"segment: --crf would refine twice: {args.checkpoint} ends in a trained CRF layer "
                             f"({model.config.crf}), which its output has been through already; leave --crf out")
    if args.backend == "numpy":  # the from-scratch model holding the same weights
        from minideeplab.interop import from_reference, from_torchvision

        model = model.cpu()
        scratch = from_torchvision(model) if args.weights is not None else from_reference(model)
        model, device = NumpyModel(scratch, like=model), "cpu"
    if not args.quiet:
        print(f"{what}, {args.backend} backend; its classes: {', '.join(classes)}")
    written = segment(model, args.images, args.out, classes, scales=tuple(args.scales), flip=args.flip, crf=args.crf,
                      alpha=args.alpha, device=device, quiet=args.quiet, resize=resize)
    if not args.quiet:
        print(f"wrote {len(written)} files to {args.out}")
    return 0


def _weights_source(weights, arch):
    """(arch, local file or None) of segment's --weights / --arch."""
    from minideeplab.pretrained import ARCHS

    if weights.startswith("torchvision:"):
        name = weights[len("torchvision:"):]
        if name not in ARCHS:
            raise ValueError(f"segment: --weights torchvision:ARCH takes ARCH in {', '.join(ARCHS)}, got {name!r}")
        if arch is not None and arch != name:
            raise ValueError(f"segment: --arch {arch} contradicts --weights {weights}")
        return name, None
    if arch not in ARCHS:
        raise ValueError(f"segment: --weights FILE needs --arch, one of {', '.join(ARCHS)}, got {arch!r}")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"segment: --weights {weights}: no such file")
    return arch, weights


@_errors_to_exit
def _ablate(args) -> int:
    from minideeplab import ablate

    study = ablate.get_study(args.study)
    if args.list:
        print(ablate.listing(study))
        return 0
    for flag, root in (("--data-root", args.data_root), ("--val-root", args.val_root)):
        if root is not None and not Path(root).exists():
            raise FileNotFoundError(f"{flag} {root} does not exist")
    out = args.out or f"runs/{study.name}"
    rows = ablate.run_study(study, out, args.only, epochs=args.epochs, crop_size=args.crop_size,
                            train_images=args.train_images, val_images=args.val_images, data_root=args.data_root,
                            val_root=args.val_root, results=args.results, threads=args.threads, log=print)
    results = Path(args.results or out)
    print(f"\n{len(rows)} rows in {results / f'{study.name}.csv'} (and {study.name}.json, the per-image "
          f"matrices, the plots)\n")
    print(ablate.report(study, rows))
    return 0


def _positive(kind):
    def parse(text):
        v = kind(text)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _add_train(sub):
    p = sub.add_parser(
        "train", help="train a DeepLab (PyTorch reference) on a VOC-layout data set",
        description="Train a DeepLab with SGD (momentum, weight decay; or --optimizer adamw), the poly learning "
                    "rate and cross-entropy "
                    "that ignores label 255, on random scale/crop/flip crops. Writes OUT/last.pt at the end of "
                    "every epoch (and every --checkpoint-every iterations), atomically, and OUT/best.pt when "
                    "an evaluation beats the best val mIoU so far; --resume continues from OUT/last.pt and "
                    "reaches the same weights as an uninterrupted run. Data parallel: launch with torchrun "
                    "--nproc_per_node=N -m minideeplab train ... (gloo on the CPU, NCCL with --device cuda); "
                    "--batch-size is the global batch, so N processes make the run of one.")
    p.add_argument("--model", default="v3plus",
                   help="v1, v2, v3, v3plus, lraspp or linear (a ViT's tokens, a 1x1 conv) (default: %(default)s)")
    p.add_argument("--backbone", default="mini",
                   help="vgg16, resnet18/34/50/101/152, mini (trains on a CPU), vit_mini, vit_mini_na, vit_tiny, "
                        "vit_small, ... (specs.deeplab.NAMED_BACKBONES) (default: %(default)s)")
    p.add_argument("--output-stride", type=int, default=None,
                   help="8 or 16 for ResNets (default: the model's, 16 for v3/v3plus, 8 for v1/v2)")
    p.add_argument("--data-root", default="data/synthetic",
                   help="folder in the PASCAL VOC layout, or Cityscapes' (leftImg8bit/, gtFine/; the split names "
                        "the folder) (default: %(default)s)")
    p.add_argument("--train-split", default="train", help="split list to train on (default: %(default)s)")
    p.add_argument("--val-split", default="val", help="split list to evaluate on (default: %(default)s)")
    p.add_argument("--val-root", default=None,
                   help="folder whose --val-split is evaluated, e.g. data/synthetic while --data-root is a larger "
                        "generated set (default: --data-root)")
    p.add_argument("--out", default=None, help="folder for checkpoints (default: runs/MODEL_BACKBONE)")
    p.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="the global batch, split over torchrun's processes (default: %(default)s)")
    p.add_argument("--crop-size", type=int, default=128, help="square training crops (default: %(default)s)")
    p.add_argument("--scale-range", type=_positive(float), nargs=2, default=[0.5, 2.0], metavar=("LOW", "HIGH"),
                   help="random rescaling of training images before the crop (default: 0.5 2.0, DeepLab's)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="base learning rate of the poly schedule (default: %(default)s)")
    p.add_argument("--optimizer", default="sgd",
                   help="sgd: DeepLab's (momentum, L2 weight decay); adamw: the transformers' (Adam, betas 0.9 "
                        "and 0.999, decoupled weight decay; --momentum unused) (training.optimizers) "
                        "(default: %(default)s)")
    p.add_argument("--warmup-iters", type=int, default=0, metavar="ITERATIONS",
                   help="raise the learning rate linearly over the first ITERATIONS (times the poly schedule); "
                        "0: no warm-up (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD's (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS",
                   help="evaluate on --val-split every so many epochs, 0: never (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="ITERATIONS",
                   help="also checkpoint every so many iterations, 0: at epoch ends only (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=None, metavar="N", help="train on the first N images only")
    p.add_argument("--val-images", type=int, default=None, metavar="N", help="evaluate on the first N images only")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:1 or auto; under torchrun cuda is cuda:LOCAL_RANK (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64 is slow; for exact comparisons (default: %(default)s)")
    p.add_argument("--model-option", type=_model_option, action="append", metavar="KEY=VALUE",
                   help="another build_model argument, a Python literal, repeatable: image_pooling=False, "
                        "\"atrous_rates=(12, 24, 36)\", aspp_channels=128, dropout=0.1, aux=True; crf=True adds "
                        "the dense CRF as a trained last layer (5 mean-field iterations), \"crf={'n_iters': 3}\" "
                        "with CRFHead's arguments")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (a run's last.pt or best.pt, or an exported file) "
                        "with a fresh optimiser at iteration 0; keys this model has and the checkpoint lacks (a "
                        "CRF layer) keep their initial values, and the log names them. --resume of such a run "
                        "resumes it")
    p.add_argument("--backend", choices=("torch", "scratch"), default="torch",
                   help="torch: this PyTorch trainer; scratch: the NumPy one (minideeplab.training.numpy_backend, "
                        "one process) (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same arguments as its run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the per-epoch lines are still printed)")
    p.set_defaults(func=_train)


def _add_inference(p, checkpoint_required=True):
    p.add_argument("--checkpoint", required=checkpoint_required, help="a checkpoint written by 'minideeplab train'")
    p.add_argument("--scales", type=_positive(float), nargs="+", default=[1.0],
                   help="input scales whose softmax outputs are averaged, e.g. 0.5 0.75 1 1.25 (default: 1)")
    p.add_argument("--flip", action="store_true", help="also average the mirror images' outputs")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minideeplab",
        description="Learn DeepLab by building it: course tools, grading, benchmarks, and training, evaluating "
                    "and running the PyTorch reference models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    course = sub.add_parser("course", help="build the student course from the solutions",
                            description="Manage the student notebooks in course/.")
    course_sub = course.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    build = course_sub.add_parser(
        "build", help="write course/ from solutions/",
        description="Write course/ from solutions/, replacing each '### BEGIN SOLUTION' ... "
                    "'### END SOLUTION' region with a stub that raises ExerciseNotDone. "
                    "A notebook a student has edited is never overwritten; with --force it is "
                    "first backed up to course/.backup/.")
    build.add_argument("--solutions", default="solutions", help="folder of complete notebooks (default: %(default)s)")
    build.add_argument("--course", default="course", help="folder to write (default: %(default)s)")
    build.add_argument("--force", action="store_true",
                       help="also replace edited notebooks, after backing them up to COURSE/.backup/")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if course/ differs from a fresh build")
    build.set_defaults(func=_course_build)
    tidy = course_sub.add_parser(
        "tidy", help="strip outputs from solutions/ and give every cell a stable id",
        description="For developers before a commit: remove outputs and execution counts from the "
                    "solution notebooks, give cells without an id a stable one, and set the python3 "
                    "kernelspec, so that diffs stay readable and rebuilds change nothing.")
    tidy.add_argument("--solutions", default="solutions", help="folder of complete notebooks (default: %(default)s)")
    tidy.set_defaults(func=_course_tidy)

    grade = sub.add_parser(
        "grade", help="run notebooks and print a per-exercise table (or a JSON / CSV gradebook)",
        description="Run each notebook in a fresh kernel of its own and report every exercise as passed, "
                    "not done, wrong or not run, then the whole message (details and hint) of every wrong "
                    "exercise whose check said more than one line. The notebook files are never modified. "
                    "A cell that runs past --timeout or a kernel that dies fails the exercises the notebook "
                    "did not reach; the next notebook is graded as usual. For instructors: "
                    "'grade --csv submissions/*/*.ipynb > gradebook.csv'. "
                    "Exit status: 0 every exercise passed and no other cell raised an error, 1 otherwise, "
                    "2 a notebook could not be read (the others are still graded) or bad arguments.")
    grade.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="notebook files to grade")
    grade.add_argument("--timeout", type=_positive(int), default=600,
                       help="seconds allowed per cell (default: %(default)s)")
    form = grade.add_mutually_exclusive_group()
    form.add_argument("--json", dest="output", action="store_const", const="json", default="table",
                      help="print one JSON document: per notebook, per exercise the status, the one-line reason, "
                           "the check's whole message and the seconds taken; errors outside the exercises")
    form.add_argument("--csv", dest="output", action="store_const", const="csv",
                      help="print a gradebook: a row per notebook file (passed, number of exercises, each "
                           "exercise's status, other errors, seconds, why it could not be read)")
    grade.set_defaults(func=_grade)

    pre = sub.add_parser(
        "precompile", help="compile the numba kernels into numba's cache (make lab and make test run it)",
        description="Compile every numba kernel the notebooks and trainers use, for float32 and float64, into "
                    "numba's on-disk cache (__pycache__ beside the sources), and minideeplab's modules to "
                    "bytecode, so that no notebook cell waits for a compiler on its first run. Takes about a "
                    "minute on a cold cache, a few seconds when it is warm; does nothing under NUMBA_DISABLE_JIT=1.")
    pre.add_argument("--quiet", action="store_true", help="print nothing")
    pre.set_defaults(func=_precompile)

    bench = sub.add_parser("bench", help="time scratch code against the PyTorch reference",
                           description="Benchmarks: scratch against PyTorch in the same run, same threads.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="SUITE", required=True)
    suites = {
        "atrous": ("atrous convolution on DeepLab layer shapes, forward and backward",
                   "Time minideeplab.scratch.atrous_conv2d (forward and backward) against "
                   "torch.nn.functional.conv2d on a fixed suite of DeepLab layer shapes (ASPP, "
                   "backbone, and the depthwise convs of Xception-65 and MobileNetV3), with the "
                   "same thread count for numba, NumPy's BLAS and torch. Prints a table and the "
                   "median ratio scratch/torch.",
                   "threads for every library", 7, "small shapes, one repeat"),
        "crf": ("dense CRF (permutohedral lattice) against pydensecrf2",
                "Time minideeplab.scratch.crf.dense_crf (numba permutohedral lattice) against "
                "pydensecrf2 on a 375x500 photograph with 21 labels and 10 iterations, for DeepLab v2's "
                "parameters and pydensecrf's README example, after checking that they agree. "
                "Prints a table and the ratio scratch/pydensecrf.",
                "numba threads for the scratch CRF", 5, "a 60x80 image, one repeat"),
        "model": ("a whole DeepLab forward pass against torch with the same weights",
                  "Time scratch DeepLab models against torch holding the same weights: v3+ on ResNet-50 and "
                  "ResNet-101 (output stride 16) and on aligned Xception-65 (smp's layout, 512x512) against "
                  "their reference twins; torchvision's deeplabv3_resnet50 (output stride 8), "
                  "deeplabv3_mobilenet_v3_large and lraspp_mobilenet_v3_large against the scratch models "
                  "holding their weights; 513x513 unless said, batch 1, eval, float32. Each side runs in its "
                  "own process with the same thread count for torch, numba and NumPy's BLAS; the outputs are "
                  "checked to agree. Prints a table of parameters, multiply-adds, time and extra memory "
                  "(peak RSS above the loaded model's) and the ratios scratch/torch.",
                  "threads for every library", 3, "small models on a 65x65 input, one repeat"),
        "attention": ("the ViT and one transformer block against torch, same weights",
                      "Time the scratch ViT-tiny (224x224, batch 1, eval) against timm's vit_tiny_patch16_224 "
                      "holding the same weights, and one transformer block (192 channels, 3 heads, 197 tokens, "
                      "batch 8) forward and backward against its twin under autograd. Each side runs in its own "
                      "process with the same thread count for torch, numba and NumPy's BLAS, the sides "
                      "alternating; the outputs (and every gradient) are checked to agree. Prints the ratios "
                      "scratch/torch (target: 1.5 at most).",
                      "threads for every library", 7, "a 2-block ViT on 32x32 and a 2x17-token block, one repeat"),
        "train": ("a DeepLab training step in NumPy against torch's, same weights and batch",
                  "Time a training step (forward + loss, backward, SGD update) of the mini DeepLab v3+ in NumPy "
                  "(minideeplab.training.numpy_backend) against the torch trainer's: 8 128x128 crops, float32, the "
                  "same weights, the same thread count for torch, numba and NumPy's BLAS, each side in its own "
                  "process; the first step's losses are checked to agree. Prints img/s, the ratio numpy/torch "
                  "and each phase's time.",
                  "threads for every library", 5, "2 64x64 crops, one repeat"),
    }
    for name, (help_, description, threads_help, repeat, quick_help) in suites.items():
        suite = bench_sub.add_parser(name, help=help_, description=description)
        suite.add_argument("--threads", type=int, default=2, help=f"{threads_help} (default: %(default)s)")
        suite.add_argument("--repeat", type=int, default=repeat,
                           help="timed runs per case; the median is kept (default: %(default)s)")
        suite.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
        suite.add_argument("--quick", action="store_true", help=f"{quick_help}: a smoke test of the benchmark")
        suite.set_defaults(func=_bench)
        if name == "train":
            suite.add_argument("--crf", action="store_true",
                               help="also time the step of the same model with the CRF layer (5 mean-field "
                                    "iterations, the lattice) on 8 images of data/synthetic")
        if name == "model":
            suite.add_argument("--size", type=_positive(int), default=None, metavar="PIXELS",
                               help="run every case on a PIXELS x PIXELS input (default: each case's own, 513 "
                                    "or 512; smp's layout takes multiples of 16)")
        if name == "atrous":
            suite.add_argument("--depthwise", action="store_true",
                               help="only the depthwise rows (groups == channels)")
        if name == "crf":
            suite.add_argument("--backward", action="store_true",
                               help="time the CRF as a layer: mean_field's backward against its forward "
                                    "(5 iterations, float32)")
            suite.add_argument("--window", action="store_true",
                               help="time the local-window CRF (windows 5, 7, 11) against the lattice at 128x128 "
                                    "and 513x513, with its label agreement with the full CRF (with --backward: "
                                    "both, one JSON object holding both reports)")

    _add_train(sub)
    ev = sub.add_parser(
        "eval", help="score a checkpoint: mIoU, per-class IoU, trimap accuracy",
        description="Evaluate a checkpoint on full images of a split (one confusion matrix over the split): "
                    "mean IoU, pixel accuracy, per-class IoU and the trimap accuracy (pixel accuracy within "
                    "a band around the object boundaries), optionally with multi-scale and flipped inputs.")
    _add_inference(ev)
    ev.add_argument("--data-root", default=None,
                    help="VOC- or Cityscapes-layout folder (default: the checkpoint's)")
    ev.add_argument("--split", default=None, help="split list (default: the checkpoint's validation split)")
    ev.add_argument("--images", type=_positive(int), default=None, metavar="N", help="the first N images only")
    ev.add_argument("--trimap-widths", type=_positive(float), nargs="+", default=[1, 2, 4, 8, 16], metavar="PIXELS",
                    help="band widths of the trimap accuracy (default: 1 2 4 8 16)")
    ev.add_argument("--json", action="store_true",
                    help="print one JSON object (miou, pixel_accuracy, mean_accuracy, per_class_iou, "
                         "trimap_accuracy, images); NaN as null")
    ev.set_defaults(func=_eval)

    seg = sub.add_parser(
        "segment", help="segment image files, writing colour overlays",
        description="Segment images with a checkpoint of 'minideeplab train' (its classes: the synthetic shapes, "
                    "unless it was trained on other data) or with torchvision's published weights for real "
                    "photographs (COCO with the 20 VOC classes); for each IMAGE write OUT/<name>.png (the class "
                    "map at the image's size, a VOC palette PNG) and OUT/<name>_overlay.png (the image under the "
                    "class colours, with a legend of the classes present).")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    seg.add_argument("--out", required=True, help="folder to write (created if missing)")
    _add_inference(seg, checkpoint_required=False)
    seg.add_argument("--weights", default=None, metavar="torchvision:ARCH|FILE",
                     help="instead of --checkpoint: torchvision's published weights, torchvision:ARCH with ARCH one "
                          "of deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3_mobilenet_v3_large, "
                          "lraspp_mobilenet_v3_large (read from $TORCH_HOME/hub/checkpoints/, downloaded there "
                          "when online), or a local state_dict FILE of the --arch architecture")
    seg.add_argument("--arch", default=None, help="the architecture of a --weights FILE (one of the ARCHs above)")
    seg.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                     help="numpy: the from-scratch model holding the weights; torch: the PyTorch module "
                          "(default: %(default)s)")
    seg.add_argument("--crf", action="store_true",
                     help="refine with the dense CRF (DeepLab v2's parameters, 10 mean-field iterations)")
    seg.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours (default: %(default)s)")
    seg.set_defaults(func=_segment)

    ex = sub.add_parser(
        "export", help="write a checkpoint to ship: weights, config and history, no optimizer state",
        description="Copy a training checkpoint without what only --resume needs (the optimizer's momentum, the "
                    "random states), its weights in --dtype: float16 makes the mini v3+ about 4.7 MB. eval, "
                    "segment and load_model read the result like any checkpoint; it cannot be resumed.")
    ex.add_argument("--checkpoint", required=True, help="a checkpoint written by 'minideeplab train'")
    ex.add_argument("--out", required=True, help="file to write (atomically)")
    ex.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float16",
                    help="of the floating-point weights (default: %(default)s)")
    ex.set_defaults(func=_export)

    ab = sub.add_parser(
        "ablate", help="the papers' ablations on the synthetic set: train, measure, tabulate",
        description="Train and measure each configuration of minideeplab.ablate.ROWS (a no-atrous FCN, v1, v2, "
                    "v3 at output stride 32/16/8, without image pooling, with the paper's rates, v3+ with and "
                    "without the dense CRF, and a shallow network with a 27 px field of view) with one schedule, "
                    "on the mini backbone; each in OUT/NAME (a finished row is skipped, an interrupted one "
                    "resumes). Writes ablation.csv, ablation.json, ablation_miou.png and ablation_trimap.png "
                    "to RESULTS, prints the table and checks the papers' trends against it. The shipped "
                    "results: minideeplab ablate --out runs/ablation --results data/ablation")
    ab.add_argument("--study", choices=("ablation", "attention", "crf"), default="ablation",
                    help="ablation: the papers' table (minideeplab.ablate.ROWS); attention: atrous convolution on "
                         "top of attention (minideeplab.ablate.attention: mini CNN v3+, ViT + linear / ASPP / ASPP + "
                         "decoder, SegFormer-mini, ViT with dilated neighbourhood attention; 30 epochs); crf: the "
                         "dense CRF as post-processing against the trained CRF layer, 3 seeds "
                         "(minideeplab.ablate.crf_study; its schedules are fixed, --list gives the expected CPU hours "
                         "per row). The shipped results: --out runs/STUDY --results data/ablation --data-root "
                         "runs/synthetic-3000 --val-root data/synthetic (default: %(default)s)")
    ab.add_argument("--out", default=None,
                    help="folder for the rows' checkpoints and results (default: runs/STUDY)")
    ab.add_argument("--results", default=None,
                    help="folder for the table and plots (default: OUT); data/ablation for the shipped ones")
    ab.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="these rows only (see --list); a CRF row brings the row whose weights it uses")
    ab.add_argument("--epochs", type=_positive(int), default=None,
                    help="(default: the study's: 8 for ablation, ablate.EPOCHS; 30 for attention)")
    ab.add_argument("--train-images", type=_positive(int), default=None, metavar="N",
                    help="train on the first N images only (default: all)")
    ab.add_argument("--val-images", type=_positive(int), default=None, metavar="N",
                    help="evaluate on the first N images only (default: all)")
    ab.add_argument("--crop-size", type=_positive(int), default=128, help="(default: %(default)s)")
    ab.add_argument("--data-root", default="data/synthetic",
                    help="VOC-layout folder whose train split the rows train on (default: %(default)s; the shipped "
                         "study: 3,000 generated images, see README)")
    ab.add_argument("--val-root", default=None,
                    help="folder whose val split scores the rows (default: --data-root)")
    ab.add_argument("--threads", type=_positive(int), default=1,
                    help="torch threads for each row's training, evaluation and inference timing, the same for every "
                         "row (default: %(default)s)")
    ab.add_argument("--list", action="store_true", help="print the configurations (costs included) and exit")
    ab.set_defaults(func=_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
