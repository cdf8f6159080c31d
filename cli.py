"""alsel command line: parsing, progress on stderr, tables on stdout, errors mapped to exit codes.

All computation lives in the `alsel` package; each command here only opens inputs, calls the stage
function and reports. Exit codes: 0 done, 2 bad usage or input (one line `error: ...`), 1 a bug.
"""

from __future__ import annotations

import os
import signal


def _stop_while_starting(signum, frame):
    """Ctrl-C or SIGTERM while the heavy modules load: one line, no traceback, nothing was written."""
    os.write(2, b"stopped: interrupted while starting; nothing was written\n")
    os._exit(130 if signum == signal.SIGINT else 143)


try:  # until main() installs its own handlers (restored at the end of this module for importers)
    _STARTUP_HANDLERS = {s: signal.signal(s, _stop_while_starting) for s in (signal.SIGINT, signal.SIGTERM)}
except ValueError:  # imported outside the main thread
    _STARTUP_HANDLERS = {}

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from enum import Enum  # noqa: E402
from typing import Annotated, Iterator, Optional  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,  # noqa: E402
                           TimeRemainingColumn)
from rich.table import Table  # noqa: E402

import alsel  # noqa: E402
from alsel import figures  # noqa: E402
from alsel._lazy import LazyModule  # noqa: E402
from alsel import metrics, output, scoring, selection, store, strategies, thresholds  # noqa: E402
from alsel.errors import AlselError, Interrupted  # noqa: E402
from alsel.stream import DEVICES, resolve_device  # noqa: E402
from alsel.rounding import resolve_precision  # noqa: E402

heads = LazyModule("alsel.head")  # torch's nn: imported when a command trains or loads a head

def _flag_shows_no_type() -> None:
    """typer >= 0.2x renders a boolean flag as `--json <bool>`, as if it took a value; show flags as flags
    (the value column left empty), as click and earlier typer do."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "alsel_flags", False):
        return

    def display_type_rich(self, ctx):
        return "" if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    display_type_rich.alsel_flags = True
    option.display_type_rich = display_type_rich


_flag_shows_no_type()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Active learning for image-text retrieval: choose which pool items to annotate next.")
out_console = Console(highlight=False, soft_wrap=True)
if not out_console.is_terminal:  # files and pipes: tables at their natural width, not 80 columns
    out_console = Console(highlight=False, soft_wrap=True, width=200)
err_console = Console(stderr=True, highlight=False)
CREATED_BY = "alsel"


# --------------------------------------------------------------------------- shared options


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum for Typer from the library's tuple of allowed values (one source of truth)."""
    return Enum(name, {v: v for v in values}, type=str)


Select = choices("Select", thresholds.SELECT)
Batch = choices("Batch", thresholds.BATCH)
Form = choices("Form", thresholds.FORMS)
Weight = choices("Weight", scoring.WEIGHTS)
DeviceName = choices("DeviceName", DEVICES)


Paired = Annotated[str, typer.Option("--paired", help="Paired store (images with captions).", show_default=False)]
Unpaired = Annotated[str, typer.Option("--unpaired", help="Pool store (the unpaired side).", show_default=False)]
Out = Annotated[str, typer.Option("--out", help="Output file (written atomically).", show_default=False)]
Device = Annotated[DeviceName, typer.Option("--device", help="auto = CUDA when available.")]
ChunkSize = Annotated[Optional[int], typer.Option("--chunk-size", min=1, show_default=False,
                                                  help="Pool rows read per chunk (sets peak memory). "
                                                       "Default: from free memory, a multiple of the compute tile.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="Similarities in auto|fp32|bf16|fp16. Low precision is exact: entries within the rounding "
                        "bound of their threshold are recomputed in float32. auto = fp16 on CUDA, bf16 on CPUs "
                        "with native bfloat16, else fp32.")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", show_default=False,
                                                help="Compare in the space of a head trained by `alsel train`.")]
# head flags (train, simulate)
InitOpt = Annotated[str, typer.Option(help="Head initialisation: identity (the raw space; dim = D) or random.")]
DimOpt = Annotated[Optional[int], typer.Option(help="Head output dimension.",
                                               show_default="the embedding D")]
HeadMargin = Annotated[float, typer.Option(help="α of the max-of-hinges loss.")]
EpochsOpt = Annotated[Optional[int], typer.Option(show_default=False, help=(
    "At most this many passes over the paired captions (early stopping on a held-out split usually ends "
    "sooner). \\[default: 50 with --init identity, 200 with --init random; 50 for the probabilistic head of "
    "the labels setting]"))]
ValSplitOpt = Annotated[float, typer.Option("--val-split", help="Fraction of the paired images held out to choose "
                                                                "the epochs and the pull toward the initial map "
                                                                "(then refit on all); 0 = train every epoch.")]
AnchorOpt = Annotated[Optional[float], typer.Option("--anchor", show_default=False, help=(
    "Pull toward the initial map (L2-SP, in pairs' worth). (default: from identity, 0 or 50, chosen on the "
    "held-out split; 0 from random)"))]
LearnerOpt = Annotated[str, typer.Option("--learner", help=(
    "linear: one linear map per modality; mlp: a residual MLP per modality after it (starts at the same "
    "map; same training rule)."))]
FallbackOpt = Annotated[Optional[str], typer.Option("--fallback", show_default=False, help=(
    "auto / advise: the strategy used when no candidate is reliably ahead of random (or nothing could be "
    "measured); random gives the plain rule. TypiClust was behind random in none of the strategy report's 16 "
    f"experiments. \\[default: {strategies.AUTO_FALLBACK}]"))]
LABEL_EPOCHS = 50  # --epochs of the probabilistic head (the labels setting) when not given
PatienceOpt = Annotated[int, typer.Option(help="Epochs without a better validation MRR before stopping (epochs "
                                                "whose outputs have collapsed to one point do not count).")]
HeadBatch = Annotated[int, typer.Option("--batch-size", help="Pairs per training step.")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate.")]
# probabilistic-head flags (train --objective labels, simulate --annotate labels)
SamplesOpt = Annotated[int, typer.Option(help="Probabilistic head (the labels setting): samples J of each Gaussian "
                                              "embedding.")]
KlOpt = Annotated[float, typer.Option(help="Probabilistic head (the labels setting): weight β of the KL term.")]
StepsOpt = Annotated[int, typer.Option(help="Probabilistic head (the labels setting): train for exactly this many "
                                            "steps instead of --epochs passes (0 = use --epochs).")]
# threshold flags: None = not given (score checks given flags against a --thresholds file)
SelectOpt = Annotated[Optional[Select], typer.Option("--select", show_default="images",
                                                     help="Pool side to choose from.")]
TopK = Annotated[Optional[int], typer.Option("--top-k", show_default="1",
                                             help="k of the k-th hardest negative.")]
BatchOpt = Annotated[Optional[Batch], typer.Option("--batch", show_default="full",
                                                   help="Negatives from the whole paired set or a mini-batch.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", show_default="128",
                                                  help="Mini-batch size for --batch mini.")]
Margin = Annotated[Optional[float], typer.Option("--margin", show_default="0.2", help="α.")]
FormOpt = Annotated[Optional[Form], typer.Option("--form", show_default="loss",
                                                 help="ξ = max(h, p-α) (loss), h (rank) or p-α (margin).")]
Seed = Annotated[Optional[int], typer.Option("--seed", show_default="0",
                                             help="Seed of the mini-batch permutation.")]


def strategy_option_params(exclude: tuple = ()) -> list[inspect.Parameter]:
    """One keyword parameter per strategy option of the library (alsel.strategies.OPTION_SPECS): the same
    flags, help and values in `select` and `simulate`; None = not given."""
    params = []
    for spec in strategies.OPTION_SPECS.values():
        if spec.name in exclude:
            continue
        kind = {"int": int, "float": float}.get(spec.kind, str)  # choices, and numbers that may be auto
        values = f" ({'|'.join(spec.values)})" if spec.values else ""
        readers = [strategies.get(n) for n in strategies.names() if spec.name in strategies.get(n).reads()]
        default = getattr(strategies.Options(), spec.name)
        own = [f"{s.name}: {s.defaults[spec.name]}" for s in readers if spec.name in s.defaults]
        option = typer.Option(spec.flag, show_default=False,
                              help=f"{spec.help}{values}; default {default}{' (' + ', '.join(own) + ')' if own else ''}; "
                                   f"read by {', '.join(s.name for s in readers)}.")
        params.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[kind], option]))
    return params


def extend_command(fn, extra: list[inspect.Parameter], call, drop: tuple = ()):
    """`fn` as a Typer command with the keyword options `extra` added to its signature and its parameters
    `drop` left out of it (the ones `call` fills); the command runs call(fn, own_kwargs, extra_kwargs)."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name not in drop]
    names = {p.name for p in extra}

    params = own + extra
    full = sig.replace(parameters=params)

    @functools.wraps(fn)
    def command(*args, **kw):  # Typer passes keywords; a call from Python may leave options out
        bound = full.bind(*args, **kw)
        bound.apply_defaults()
        kw = bound.arguments
        return call(fn, {k: v for k, v in kw.items() if k not in names}, {k: kw[k] for k in names})

    command.__signature__ = full
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__
    return command


def with_strategy_options(exclude: tuple = ()):
    """Add the strategy options to a command; the function receives them as `strategy_options` (a dict)."""
    return lambda fn: extend_command(fn, strategy_option_params(exclude),
                                     lambda f, kw, extra: f(**kw, strategy_options=extra), drop=("strategy_options",))


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (errors and notes still).")]


def command(name: str | None = None, on: typer.Typer | None = None):
    """app.command (or a sub-app's) with the options every command shares (--quiet)."""
    quiet = inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt)

    def run(f, kw, extra):
        _QUIET["on"] = extra["quiet"]
        return f(**kw)

    return lambda fn: (on or app).command(name)(extend_command(fn, [quiet], run))


def threshold_params(select, top_k, batch, batch_size, margin, form, seed) -> thresholds.ThresholdParams:
    d = thresholds.ThresholdParams()
    return thresholds.ThresholdParams(
        select=select.value if select else d.select, top_k=d.top_k if top_k is None else top_k,
        batch=batch.value if batch else d.batch, batch_size=d.batch_size if batch_size is None else batch_size,
        margin=d.margin if margin is None else margin, form=form.value if form else d.form,
        seed=d.seed if seed is None else seed)


def check_flags_match(path: str, params: thresholds.ThresholdParams, given: dict) -> None:
    """With --thresholds, a threshold flag that contradicts the file is an error."""
    for key, value in given.items():
        if value is None:
            continue
        value = value.value if isinstance(value, Enum) else value
        if value != getattr(params, key):
            flag = "--" + key.replace("_", "-")
            raise AlselError(f"{path}: {flag} {value} contradicts the thresholds file ({key} = {getattr(params, key)})")


_QUIET = {"on": False}


def progress_seconds() -> float:
    """ALSEL_PROGRESS_SECONDS: the most seconds between two plain progress lines (default 30)."""
    try:
        return max(0.0, float(os.environ.get("ALSEL_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """6m20s, 45s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainTask:
    """Progress as plain lines for logs and pipes (a SLURM log):
    `score: 120,000/2,000,000 rows (6.0%), 4,950 rows/s, ETA 6m20s`, once the work has run a second (work
    shorter than that prints nothing), then at most every ALSEL_PROGRESS_SECONDS seconds, and at the end."""

    START_SECONDS = 1.0

    def __init__(self, label: str, total: int | None, unit: str, completed: int = 0, extra=None):
        self.label, self.total, self.unit, self.extra = label, total, unit, extra
        self.done, self.start_done = completed, completed
        self.t0 = time.monotonic()
        self.every = progress_seconds()
        self.last = None  # when the last line was printed (None: not yet)
        self.shown = None  # the count the last line showed
        self.fields: dict = {}
        self.ended = False
        self.lock = threading.Lock()
        self.timer = None
        if self.every == 0:
            self.emit()
        else:  # the first line a second in, even while the first chunk is still being worked on
            self.timer = threading.Timer(min(self.START_SECONDS, self.every), self.first_line)
            self.timer.daemon = True
            self.timer.start()

    def first_line(self) -> None:
        if self.last is None and not self.ended:
            self.emit()

    def line(self) -> str:
        now = time.monotonic()
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        rate = (self.done - self.start_done) / (now - self.t0) if now > self.t0 else 0.0
        if rate > 0:
            text += f", {rate:,.0f} {self.unit}/s" if rate >= 10 else f", {rate:.2g} {self.unit}/s"
            if self.total and self.done < self.total:
                text += f", ETA {duration((self.total - self.done) / rate)}"
        if self.done and (not self.total or self.done >= self.total):
            text += f", done in {duration(now - self.t0)}"
        if self.extra and self.fields:
            text += f"; {self.extra(self.fields)}"
        return text

    def emit(self) -> None:
        with self.lock:
            print(self.line(), file=sys.stderr, flush=True)
            self.last, self.shown = time.monotonic(), self.done

    def advance(self, n: int = 1, total: int | None = None, **fields) -> None:
        self.done += n
        if total is not None:
            self.total = total
        self.fields.update(fields)
        if self.last is not None and time.monotonic() - self.last >= self.every:
            self.emit()

    def resumed(self, n: int) -> None:
        """n units done by an earlier run: counted as done, not in the rate."""
        self.done += n
        self.start_done += n

    def end(self) -> None:
        """The closing line, where a line was printed and the count moved since."""
        if self.timer is not None:
            self.timer.cancel()
        if not self.ended and self.last is not None and self.shown != self.done:
            self.emit()
        self.ended = True


class Reporter:
    """Progress on stderr: rich bars with rate and ETA in a terminal, plain lines (PlainTask) otherwise,
    nothing with --quiet. `task(...)` returns the advance(n, total=None, **fields) callback."""

    def __init__(self):
        self.mode = "quiet" if _QUIET["on"] else "bar" if err_console.is_terminal else "lines"
        self.bar = None
        self.plain: list[PlainTask] = []

    def __enter__(self):
        if self.mode == "bar":
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), TextColumn("{task.fields[extra]}"),
                                console=err_console, transient=True)
            self.bar.__enter__()
        return self

    def __exit__(self, et, ev, tb):
        if self.bar is not None:
            self.bar.__exit__(et, ev, tb)
        if et is None:
            for t in self.plain:
                t.end()

    def task(self, label: str, total: int | None, unit: str = "rows", completed: int = 0, extra=None):
        """The advance(n, total=None, **fields) callback of a new task; its `resumed(n)` counts n units an
        earlier run did (a --resume): shown as done, left out of the rate and the ETA."""
        if self.mode == "quiet":
            def advance(n: int = 1, total: int | None = None, **fields) -> None:
                _stop_if_lost()
            advance.resumed = advance
            return advance
        if self.mode == "lines":
            t = PlainTask(label, total, unit, completed, extra)
            self.plain.append(t)

            def advance(n: int = 1, total: int | None = None, **fields) -> None:
                _stop_if_lost()
                t.advance(n, total, **fields)
            advance.resumed = t.resumed
            return advance
        bar, t0 = self.bar, time.monotonic()
        task = bar.add_task(label, total=total, completed=completed, rate="", extra="")
        base = [completed]

        def advance(n: int = 1, total: int | None = None, **fields) -> None:
            _stop_if_lost()
            done = bar.tasks[task].completed + n - base[0]
            rate = done / max(time.monotonic() - t0, 1e-9)
            bar.update(task, advance=n, total=total if total is not None else bar.tasks[task].total,
                       rate=f"{rate:,.1f} {unit}/s", extra=extra(fields) if extra and fields else "")

        def resumed(n: int) -> None:
            base[0] += n
            bar.update(task, advance=n)
        advance.resumed = resumed
        return advance


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, unit: str = "rows", extra=None, lazy: bool = False) -> Iterator:
    """One progress task on stderr; yields the advance(n, total=None, **fields) callback the library
    takes. `extra(fields)` formats fields given to advance (e.g. the loss). `lazy`: the task starts at
    the first advance (checks that may fail come before it, and their error stays the only line)."""
    with Reporter() as r:
        if not lazy:
            yield r.task(label, total, unit, extra=extra)
            return
        started: list = []

        def advance(n: int = 1, total_now: int | None = None, **fields) -> None:
            if not started:
                started.append(r.task(label, total, unit, extra=extra))
            started[0](n, total_now, **fields)
        yield advance


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (what was written, counts, timings) "
                                                       "on stdout instead of the summary.")]


def print_json(obj) -> None:
    """One JSON object on one line of stdout (figures already rounded by alsel.figures)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def open_paired(path: str, head_path: str | None, dev) -> tuple[store.Store, store.Paired, object]:
    """The paired store, its rows in memory, and the head (checked against it), rows through the head."""
    st = store.open_store(path, need="paired")
    try:
        head = heads.load_head(head_path, st) if head_path else None
        return st, heads.through_head(store.load_paired(st), head, dev), head
    except BaseException:
        st.close()
        raise


# --------------------------------------------------------------------------- commands


@command()
def synth(
    out: Annotated[str, typer.Option("--out", help="Output folder (created).", show_default=False)],
    images: Annotated[int, typer.Option(help="Images in the world.")] = 2000,
    captions: Annotated[int, typer.Option(help="Captions per image.")] = 5,
    classes: Annotated[int, typer.Option(help="Coarse classes.")] = 50,
    fine: Annotated[int, typer.Option(help="Fine classes per coarse class.")] = 4,
    dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    paired: Annotated[float, typer.Option(help="Fraction of images in the paired store.")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction of images in the test store.")] = 0.2,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    labels: Annotated[bool, typer.Option("--labels", help="Multi-hot class labels (/images/labels, /texts/labels): "
                                                          "the coarse classes, 30% of images with a second one.")] = False,
):
    """Generate a finely categorized synthetic world as stores.

    Writes DIR/paired.h5, pool_images.h5, pool_texts.h5, test.h5 and oracle.h5 (pool images with
    their hidden captions).

    Example: alsel synth --out toy --images 2000 --captions 5 --classes 50 --dim 64
    """
    if dtype not in ("float16", "float32"):
        raise AlselError(f"--dtype {dtype!r}: expected float16 or float32")
    if os.path.exists(out) and not os.path.isdir(out):
        raise AlselError(f"{out}: exists and is not a folder")
    paths = alsel.synth_stores(out, images=images, captions=captions, classes=classes, fine_per_class=fine, dim=dim,
                        seed=seed, paired=paired, test=test, dtype=dtype, created_by=CREATED_BY,
                        multi_label=labels)
    table = Table("file", "images", "texts", title=f"synthetic world in {out}")
    for p in paths.values():
        with store.open_store(p) as st:
            table.add_row(p, str(st.images.n if st.images else 0), str(st.texts.n if st.texts else 0))
    out_console.print(table)


@command("import")
def import_(
    out: Out,
    images: Annotated[Optional[str], typer.Option(help="Image embeddings .npy (N_i, D).", show_default=False)] = None,
    texts: Annotated[Optional[str], typer.Option(help="Text embeddings .npy (N_t, D).", show_default=False)] = None,
    text_image: Annotated[Optional[str], typer.Option("--text-image", show_default=False,
                                                      help="Int .npy (N_t,): image row of each text, -1 unpaired.")] = None,
    aligned: Annotated[bool, typer.Option("--aligned", help=(
        "Text row i describes image row i. Identical image rows (a per-caption export) stop the import "
        "unless --group-images."))] = False,
    group_images: Annotated[bool, typer.Option("--group-images", help=(
        "With --aligned: import each distinct image row once, with all the captions of its copies."))] = False,
    image_ids: Annotated[Optional[str], typer.Option("--image-ids", show_default=False,
                                                     help="Ids, one per line (or .npy). Default <file stem>:<row>.")] = None,
    text_ids: Annotated[Optional[str], typer.Option("--text-ids", show_default=False,
                                                    help="Ids, one per line (or .npy). Default <file stem>:<row>.")] = None,
    image_labels: Annotated[Optional[str], typer.Option("--image-labels", show_default=False,
                                                        help="Multi-hot .npy (N_i, C) of 0/1: class labels.")] = None,
    text_labels: Annotated[Optional[str], typer.Option("--text-labels", show_default=False,
                                                       help="Multi-hot .npy (N_t, C) of 0/1: class labels.")] = None,
    texts_text: Annotated[Optional[str], typer.Option("--texts-text", show_default=False, help=(
        "The caption strings of --texts, one per row: .txt (one per line), .jsonl (one JSON string per line), "
        ".json list or .npy; kept as /texts/text."))] = None,
    clip_retrieval: Annotated[Optional[str], typer.Option("--clip-retrieval", show_default=False,
                                                          help="A clip-retrieval inference output folder.")] = None,
    model: Annotated[str, typer.Option(help="Model name recorded in the store (must match stores used with it).")] = "imported",
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise rows (otherwise they must be unit length).")] = False,
    dtype: Annotated[Optional[str], typer.Option(help="Storage dtype float16|float32.",
                                                 show_default="as input")] = None,
):
    """Build a store from .npy arrays or a clip-retrieval output folder.

    Examples: alsel import --images img.npy --texts txt.npy --aligned --out paired.h5
              alsel import --clip-retrieval embeddings/ --model ViT-B-32 --out pool.h5
    """
    from alsel import ingest

    if dtype is not None and dtype not in ("float16", "float32"):
        raise AlselError(f"--dtype {dtype!r}: expected float16 or float32")
    if clip_retrieval is not None:
        if images or texts or image_labels or text_labels or texts_text:
            raise AlselError("import: give either --clip-retrieval or --images/--texts (and labels), not both")
        ingest.import_clip_retrieval(out, clip_retrieval, model=model, normalize=normalize, dtype=dtype,
                                     created_by=CREATED_BY)
    else:
        counts = ingest.import_arrays(out, images=images, texts=texts, text_image=text_image, aligned=aligned,
                                      image_ids=image_ids, text_ids=text_ids, model=model, normalize=normalize,
                                      dtype=dtype, created_by=CREATED_BY, image_labels=image_labels,
                                      text_labels=text_labels, group_images=group_images, texts_text=texts_text)
        if counts["grouped"]:
            err_console.print(f"note: {counts['grouped'] + counts['images']:,} image rows were "
                              f"{counts['images']:,} distinct images; each is stored once with its "
                              f"{counts['texts'] / counts['images']:.1f} captions on average",
                              markup=False, soft_wrap=True)
    info([out], as_json=False)


def embed_spec(model: str | None, pretrained: str | None, model_config: str | None, seed: int, precision: str):
    """The open_clip model of the --model/--pretrained/--model-config flags (embed, merge --captions)."""
    from alsel.embed import ModelSpec

    if model_config is not None:
        stem = os.path.splitext(os.path.basename(model_config))[0]
        if model is not None and model != stem:
            raise AlselError(f"{model_config}: --model {model} differs from the config's name {stem!r} "
                             f"(open_clip names a config after its file)")
        model = stem
    tag = pretrained if pretrained is not None else ("none" if model_config else "openai")
    return ModelSpec(name=model or "ViT-B-32", pretrained=None if tag.lower() == "none" else tag,
                     config=model_config, seed=seed, precision=precision)


@command()
def embed(
    out: Out,
    images: Annotated[Optional[str], typer.Option(show_default=False,
                                                  help="Image folder (recursive), a text file of paths, or a CSV/Parquet with a path column.")] = None,
    captions: Annotated[Optional[str], typer.Option(show_default=False,
                                                    help="CSV or JSONL with id, text and optional image (the image's id).")] = None,
    model: Annotated[Optional[str], typer.Option(show_default="ViT-B-32, or the --model-config file's name",
                                                 help="open_clip model name.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(show_default="openai; none with --model-config",
                                                      help="open_clip tag (openai, laion2b_s34b_b79k, ...), a local checkpoint file, "
                                                           "or none (random init from --seed).")] = None,
    model_config: Annotated[Optional[str], typer.Option("--model-config", show_default=False,
                                                        help="open_clip model config JSON for a custom architecture.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of a random initialisation (--pretrained none).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images or captions per forward pass.")] = 64,
    precision: Annotated[str, typer.Option(help="Inference precision: fp32, fp16 or bf16.")] = "fp32",
    workers: Annotated[int, typer.Option(help="DataLoader workers decoding images.")] = 0,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    path_column: Annotated[Optional[str], typer.Option("--path-column", show_default="the first of path, image_path, "
                                                                             "filepath, file",
                                                       help="Column of image paths in a CSV/Parquet list.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUT.partial.")] = False,
    pool_out: Annotated[Optional[str], typer.Option("--pool-out", show_default=False, help=(
        "Split in one pass: images with at least one caption go with their captions to --out (a paired store), "
        "the others to this image pool."))] = None,
    device: Device = DeviceName.auto,
):
    """Embed images and captions with open_clip into a store (paired, image pool or text pool).

    Stores made from a folder record it (image_root), so selections can name the files to caption.

    Examples: alsel embed --images photos/ --captions captions.csv --pool-out pool.h5 --out paired.h5
              alsel embed --images pool.txt --pretrained /ckpt/vitb32.pt --out pool.h5 --resume
    """
    from alsel import embed as embedding

    dev = resolve_device(device.value)
    spec = embed_spec(model, pretrained, model_config, seed, precision)
    name = spec.name
    image_list = embedding.list_images(images, path_column) if images else None
    caption_list = embedding.read_captions(captions) if captions else None
    started = time.perf_counter()
    with Reporter() as reporter, cooperative_stop() as stop:
        tasks: dict = {}

        def progress(modality: str, n: int, total: int) -> None:
            if modality not in tasks:  # the first call gives the inputs already done (a resumed run)
                tasks[modality] = reporter.task(f"embed {modality}", total, modality, completed=n)
            else:
                tasks[modality](n)

        report = embedding.embed(out, images=image_list, captions=caption_list, spec=spec, device=dev,
                                 batch_size=batch_size, workers=workers, dtype=dtype, resume=resume,
                                 created_by=CREATED_BY, progress=progress, should_stop=stop, pool_out=pool_out)
    elapsed = time.perf_counter() - started
    if report.failed:
        shown = "; ".join(f"{i} ({r})" for i, r in report.failed[:3])
        more = f"; and {len(report.failed) - 3} more" if len(report.failed) > 3 else ""
        err_console.print(f"warning: {len(report.failed)} images could not be read and were skipped "
                          f"(listed in /images/failed): {shown}{more}", markup=False, soft_wrap=True)
    if report.dropped:
        shown = "; ".join(f"{c} -> {i}" for c, i in report.dropped[:3])
        more = f"; and {len(report.dropped) - 3} more" if len(report.dropped) > 3 else ""
        err_console.print(f"warning: {len(report.dropped)} captions name an image that is missing or failed and "
                          f"were left out (listed in /texts/dropped): {shown}{more}", markup=False, soft_wrap=True)
    pool_part = f"; {pool_out} (image pool): {report.pool_images} images without a caption" if pool_out else ""
    out_console.print(f"wrote {out} ({report.kind}): {report.images} images, {report.texts} captions{pool_part}; "
                      f"{name} / {spec.pretrained or 'random init'} in {elapsed:.1f} s")


@command()
def info(
    files: Annotated[list[str], typer.Argument(help="Alsel files (stores, thresholds, scores, selections).",
                                               show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file, one per line.")] = False,
):
    """Show what alsel files hold: kind, attributes, datasets, summary (for a store: whether it holds the
    caption text). Every file is read before anything is printed.

    Example: alsel info paired.h5 pool.h5 --json
    """
    from alsel.inspect import describe

    described = [(f, describe(f)) for f in files]
    for file, d in described:
        if as_json:
            print_json(d)
            continue
        table = Table(title=f"{file} ({d['kind']})", show_header=False)
        for k, v in d["summary"].items():
            table.add_row(str(k), str(v))
        out_console.print(table)
        ds = Table("dataset", "dtype", "shape", title="datasets")
        for name, meta in d["datasets"].items():
            ds.add_row(str(name), str(meta["dtype"]), "x".join(map(str, meta["shape"])) or "scalar")
        out_console.print(ds)
        at = Table("attribute", "value", title="attributes")
        for k, v in d["attrs"].items():
            at.add_row(str(k), str(v))
        out_console.print(at)


@command()
def threshold(paired: Paired, out: Out, select: SelectOpt = None, top_k: TopK = None, batch: BatchOpt = None,
              batch_size: BatchSize = None, margin: Margin = None, form: FormOpt = None, seed: Seed = None,
              device: Device = DeviceName.auto, chunk_size: ChunkSize = None, head: HeadOpt = None,
              precision: PrecisionOpt = "auto", as_json: JsonOpt = False):
    """Compute the per-pair thresholds ξ of a paired store (README: "The math").

    Example: alsel threshold --paired paired.h5 --out xi.h5 --top-k 1 --batch full --form loss
    """
    output.check_output(out, (paired, head))  # before the work, not after
    params = threshold_params(select, top_k, batch, batch_size, margin, form, seed)
    dev = resolve_device(device.value)
    dtype = resolve_precision(precision, dev)
    t0 = time.perf_counter()
    st, p, _ = open_paired(paired, head, dev)
    with st:
        with progress_bar("threshold", thresholds.progress_total(p, params), "pairs") as advance:
            th = thresholds.make_thresholds(p, params, dev, chunk_size, advance, dtype)
        thresholds.save_thresholds(out, th, p, created_by=CREATED_BY, inputs=(head,))
    finite = th.xi[np.isfinite(th.xi)]
    if as_json:
        print_json({"wrote": out, "kind": "thresholds", "pairs": len(th.xi), **params.as_attrs(),
                    "xi_mean": figures.sig(finite.mean()) if len(finite) else None,
                    "xi_min": figures.sig(th.xi.min()), "xi_max": figures.sig(th.xi.max()),
                    "infinite": int((~np.isfinite(th.xi)).sum()),
                    "seconds": figures.seconds(time.perf_counter() - t0)})
        return
    out_console.print(f"wrote {out}: ξ for {len(th.xi)} pairs ({params.select}, top-{params.top_k}, "
                      f"{params.batch}, {params.form}); ξ mean {finite.mean() if len(finite) else float('nan'):.4f}, "
                      f"min {th.xi.min():.4f}, max {th.xi.max():.4f}")


@command()
def score(paired: Paired, unpaired: Unpaired, out: Out,
          thresholds_path: Annotated[Optional[str], typer.Option("--thresholds", show_default=False,
                                                                 help="ξ file from `alsel threshold` (else computed).")] = None,
          weight: Annotated[Weight, typer.Option(help="surplus: Σ max(0, c_j); counting: #{c_j > 0}.")] = Weight.surplus,
          shard: Annotated[Optional[str], typer.Option(help="Score pool rows of shard i of n (0-based), e.g. 0/4.",
                                                       show_default="0/1, the whole pool")] = None,
          select: SelectOpt = None, top_k: TopK = None, batch: BatchOpt = None, batch_size: BatchSize = None,
          margin: Margin = None, form: FormOpt = None, seed: Seed = None,
          device: Device = DeviceName.auto, chunk_size: ChunkSize = None, head: HeadOpt = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.partial of a stopped run.")] = False,
          precision: PrecisionOpt = "auto", as_json: JsonOpt = False):
    """Score pool items by how strongly they would be hard negatives (README: "The math"), streamed in chunks.

    Example: alsel score --paired p.h5 --unpaired u.h5 --weight surplus --shard 0/4 --out s0.h5
    """
    shard_i_n = scoring.parse_shard(shard)
    dev = resolve_device(device.value)
    dtype = resolve_precision(precision, dev)
    given = dict(select=select, top_k=top_k, batch=batch, batch_size=batch_size, margin=margin, form=form, seed=seed)
    st, p, head_model = open_paired(paired, head, dev)
    with st:
        th = None
        if thresholds_path is not None:
            th = thresholds.load_thresholds(thresholds_path, p)
            check_flags_match(thresholds_path, th.params, given)
        params = th.params if th is not None else threshold_params(**given)
        with store.open_store(unpaired, need=params.select, check_ids=False) as pool:  # ids: shard_ids' one read
            store.check_compatible(st, pool)
            if th is None:
                with progress_bar("score: thresholds", thresholds.progress_total(p, params), "pairs") as advance:
                    th = thresholds.make_thresholds(p, params, dev, chunk_size, advance, dtype)
            a, b = scoring.shard_range(*shard_i_n, pool.side(th.params.select).n)
            t0 = time.perf_counter()
            ids = scoring.shard_ids(pool, p, th.params.select, shard_i_n)
            with progress_bar("score", b - a) as advance, cooperative_stop() as stop:
                res = scoring.score_to_file(out, pool, p, th, weight.value, dev, shard_i_n, chunk_size, advance,
                                            head_model, resume, stop, inputs=(paired, unpaired, thresholds_path, head),
                                            created_by=CREATED_BY, precision=dtype, ids=ids)
            dt = time.perf_counter() - t0
    if res.attrs.get("paired_left_out"):
        err_console.print(f"note: {res.attrs['paired_left_out']} pool items are already paired and were left out",
                          markup=False, soft_wrap=True)
    if res.attrs.get("skipped_left_out"):
        err_console.print(f"note: {res.attrs['skipped_left_out']} pool items were skipped by annotators in an "
                          f"earlier round and were left out", markup=False, soft_wrap=True)
    rate = (b - a - res.resumed) / dt if dt > 0 else float("inf")
    if as_json:
        print_json({"wrote": out, "kind": "scores", "rows": b - a, "shard": f"{shard_i_n[0]}/{shard_i_n[1]}",
                    "weight": weight.value, "hard_negative_rows": int((res.count > 0).sum()),
                    "paired_left_out": int(res.attrs.get("paired_left_out", 0)),
                    "rows_per_second": figures.sig(rate, 4), "seconds": figures.seconds(dt)})
        return
    out_console.print(f"wrote {out}: {b - a} pool rows (shard {shard_i_n[0]}/{shard_i_n[1]}), "
                      f"{rate:,.0f} rows/s; {int((res.count > 0).sum())} rows are hard negatives "
                      f"for at least one pair")


@command("select")
@with_strategy_options()
def select_cmd(
    out: Out,
    budget: Annotated[Optional[int], typer.Option(help="How many pool items to choose (B). No default: required, "
                                                       "except with --candidates (the shards' own).",
                                                  show_default=False)] = None,
    strategy: Annotated[Optional[str], typer.Option(show_default=False, help=(
        f"A strategy and its option tokens ({', '.join(strategies.names())}; e.g. hn-texts-top3-mini-counting); "
        f"`alsel strategies` lists them; auto: the one `alsel advise` finds reliably ahead of random on the "
        f"paired store, else --fallback \\[default: hn with --scores, else {strategies.DEFAULT}]."))] = None,
    scores: Annotated[Optional[list[str]], typer.Option("--scores", show_default=False,
                                                        help="hn: score files of `alsel score` (all shards of one run).")] = None,
    thresholds_path: Annotated[Optional[str], typer.Option("--thresholds", show_default=False,
                                                           help="hn: a ξ file from `alsel threshold` (else computed).")] = None,
    paired: Annotated[Optional[str], typer.Option("--paired", show_default=False, help="Paired store.")] = None,
    unpaired: Annotated[Optional[str], typer.Option("--unpaired", show_default=False, help="Pool store.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (random, the fill, k-means, samples).")] = 0,
    csv: Annotated[Optional[str], typer.Option("--csv", show_default=False, help=(
        "Also write rank,id,row,score as CSV, with a path column (the file to show an annotator) where the "
        "pool was embedded from a folder."))] = None,
    labelstudio: Annotated[Optional[str], typer.Option("--labelstudio", show_default=False, help=(
        "Also write a Label Studio import file (JSON tasks: data.image, id, rank, score) for an "
        "image-captioning project; data.image is the photo's local-files URL (/data/local-files/?d=...), "
        "or see `alsel labelstudio push`."))] = None,
    document_root: Annotated[Optional[str], typer.Option("--document-root", show_default=(
        "$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, else the folder above the photos"), help=(
        "--labelstudio: Label Studio's local-files document root (the URLs are paths under it)."))] = None,
    image_url_prefix: Annotated[Optional[str], typer.Option("--image-url-prefix", show_default=False, help=(
        "--labelstudio: data.image = this prefix + id, for another image server, instead of the local-files "
        "URL."))] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", show_default=False, help=(
        "Shard i of n (0-based) of a sharded selection: write the candidates of pool rows [i·N/n, (i+1)·N/n) to "
        f"--out ({', '.join(strategies.sharded())}; auto needs --advice); merge them with --candidates. "
        "Default: the whole pool in this process."))] = None,
    candidates: Annotated[Optional[list[str]], typer.Option("--candidates", show_default=False, help=(
        "Merge the candidates files of every shard (select --shard) into the selection. Default: none, "
        "the strategy runs on the pool."))] = None,
    advice: Annotated[Optional[str], typer.Option("--advice", show_default=False, help=(
        "--strategy auto: the advice file of `alsel advise` for these stores and budget. Default: none, "
        "advised here."))] = None,
    fallback: FallbackOpt = None,
    html_page: Annotated[Optional[str], typer.Option("--html", show_default=False, help=(
        "Also write the batch as one self-contained HTML page: thumbnails in rank order with the reason for "
        "each, a PCA map of paired, pool and batch, the fill share."))] = None,
    device: Device = DeviceName.auto, chunk_size: ChunkSize = None, head: HeadOpt = None,
    precision: PrecisionOpt = "auto", as_json: JsonOpt = False,
    strategy_options: dict = None,
):
    """Choose B pool items with a strategy (`alsel strategies` lists them and what each needs).

    Items already in the paired store (same id, same side) are never chosen. hn takes score shards
    (--scores) or scores the pool here; the ASCMR strategies take a pool of pairs and --head from
    `alsel train --objective labels`.

    Examples: alsel select --scores s0.h5 s1.h5 s2.h5 --budget 100 --out sel.h5 --csv sel.csv
              alsel select --strategy typiclust --paired p.h5 --unpaired u.h5 --budget 100 --out sel.h5
    """
    if candidates:
        return merge_candidates_cmd(out, budget, candidates, csv, labelstudio, image_url_prefix, document_root,
                                    html_page, paired, unpaired, as_json, device,
                                    given=[n for n, v in (("--strategy", strategy), ("--scores", scores),
                                                          ("--shard", shard), ("--thresholds", thresholds_path),
                                                          ("--head", head), ("--fallback", fallback)) if v])
    if budget is None:
        raise AlselError("select: --budget is required (how many pool items to choose)")
    spec = strategy or strategies.default_for(scores)
    if fallback is not None and spec != "auto":
        raise AlselError(f"--fallback goes with --strategy auto (what auto runs when no candidate is reliably ahead "
                         f"of random), not with {spec}")
    if advice is not None and spec != "auto":
        raise AlselError("--advice goes with --strategy auto (the default)")
    if shard is not None:
        return select_shard_cmd(out, budget, spec, shard, paired, unpaired, head, seed, device, chunk_size, precision,
                                advice, fallback, as_json, strategy_options,
                                given=[n for n, v in (("--csv", csv), ("--labelstudio", labelstudio),
                                                      ("--html", html_page), ("--scores", scores)) if v])
    if html_page is not None and unpaired is None:
        raise AlselError("--html: give the pool (--unpaired POOL.h5): the page shows its photos and maps it")
    for o in (out, csv, labelstudio, html_page):
        if o is not None:
            output.check_output(o, (*(scores or ()), paired, unpaired, head, thresholds_path))
    dev = resolve_device(device.value)
    with contextlib.ExitStack() as stack:
        pst = stack.enter_context(store.open_store(paired, need="paired")) if paired else None
        pool = stack.enter_context(store.open_store(unpaired)) if unpaired else None
        if pst is not None and pool is not None:
            store.check_compatible(pst, pool)
        from alsel.probhead import load_any_head

        head_model = load_any_head(head, pst or pool) if head else None
        inputs = strategies.Inputs(pool=pool, budget=budget, paired=pst, head=head_model, seed=seed, device=dev,
                                   chunk_size=chunk_size, precision=resolve_precision(precision, dev),
                                   scores=scores or None, thresholds=thresholds_path)
        with Reporter() as reporter:
            phases: dict = {}

            def progress(what: str, k: int, total: int) -> None:
                if what not in phases:
                    phases[what] = reporter.task(f"select: {what}", total, "rows" if what == "scoring" else "steps")
                phases[what](k)

            inputs.progress = progress
            auto = None
            if spec == "auto":
                from alsel.advise import AdviceConfig, choose_auto

                if pst is None or pool is None:
                    raise AlselError("--strategy auto: needs --paired and --unpaired (advice is measured on them)")
                if pool.images is not None:  # bad pool ids refused before the advice's work, not after it
                    pool.check_ids("images")
                say = reporter.task("select: advise", None, "evaluations")
                spec, auto = choose_auto(pst, pool, budget,
                                         AdviceConfig(budget=budget, fallback=fallback or strategies.AUTO_FALLBACK),
                                         advice_path=advice, has_head=head_model is not None,
                                         progress=lambda msg: say(1), fallback_given=fallback)
            sel = strategies.select(spec, inputs, **strategy_options)
            if auto is not None:
                sel.attrs.update(auto=1, auto_advice=str(auto["confidence"]))
                sel.notes.append(f"auto chose {sel.attrs['strategy']}: {auto['confidence']}")
        page = None
        if html_page is not None:
            from alsel.page import page_html

            page = (html_page, page_html(sel, pool, pst))
        selection.save_selection(out, sel, csv, inputs=(*(scores or ()), paired, unpaired, head, thresholds_path),
                                 created_by=CREATED_BY, labelstudio=labelstudio, image_url_prefix=image_url_prefix,
                                 document_root=document_root, page=page)
    for note in sel.notes:
        err_console.print(f"note: {note}", markup=False, soft_wrap=True)
    if as_json:
        from alsel.annotation import image_path

        root = sel.attrs.get("image_root")
        print_json({"wrote": out, "kind": "selection", "csv": csv, "labelstudio": labelstudio, "html": html_page,
                    "strategy": sel.attrs["strategy"], "auto": sel.attrs.get("auto_advice"),
                    "budget": int(sel.attrs["budget"]),
                    "fill_count": int(sel.attrs["fill_count"]), "fill_rule": sel.attrs["fill_rule"],
                    "paired_left_out": int(sel.attrs.get("paired_left_out", 0)),
                    "selected": [{"rank": r + 1, "id": str(i), "row": int(row),
                                  "score": None if np.isnan(v) else figures.sig(v),
                                  **({"path": image_path(root, i)} if root else {})}
                                 for r, (i, row, v) in enumerate(zip(sel.ids, sel.rows, sel.score))]})
        return
    show_selection(out, sel)
    written = [f for f in (csv, labelstudio, html_page) if f]
    if written:
        out_console.print(f"also wrote {' and '.join(written)}")


def select_shard_cmd(out, budget, spec, shard, paired, unpaired, head, seed, device, chunk_size, precision, advice,
                     fallback, as_json, strategy_options, given) -> None:
    """select --shard i/n: one shard's candidates file (SPEC §10)."""
    from alsel.candidates import save_candidates

    if given:
        raise AlselError(f"--shard writes a candidates file; {given[0]} goes with the merge (--candidates)")
    if paired is None or unpaired is None:
        raise AlselError("--shard: give --paired and --unpaired (each shard reads the pool's rows of its shard)")
    i_n = scoring.parse_shard(shard)
    output.check_output(out, (paired, unpaired, head, advice))
    dev = resolve_device(device.value)
    t0 = time.perf_counter()
    with store.open_store(paired, need="paired") as pst, store.open_store(unpaired) as pool:
        store.check_compatible(pst, pool)
        if spec == "auto":
            from alsel.advise import choose_auto

            if advice is None:
                raise AlselError("--strategy auto --shard: give --advice (run `alsel advise` once, before the "
                                 "shards, so that every shard runs the same strategy)")
            spec, _ = choose_auto(pst, pool, budget, advice_path=advice, has_head=head is not None,
                                  fallback_given=fallback)
        from alsel.probhead import load_any_head

        inputs = strategies.Inputs(pool=pool, budget=budget, paired=pst, seed=seed, device=dev,
                                   head=load_any_head(head, pst) if head else None, chunk_size=chunk_size,
                                   precision=resolve_precision(precision, dev), shard=i_n)
        with Reporter() as reporter:
            phases: dict = {}

            def progress(what: str, k: int, total: int) -> None:
                if what not in phases:
                    phases[what] = reporter.task(f"select {shard}: {what}", total, "steps")
                phases[what](k)

            inputs.progress = progress
            data, attrs = strategies.select_shard(spec, inputs, **strategy_options)
        save_candidates(out, data, attrs, inputs=(paired, unpaired, head, advice), created_by=CREATED_BY)
    if as_json:
        print_json({"wrote": out, "kind": "candidates", "strategy": attrs["strategy"], "shard": attrs["shard"],
                    "rows": attrs["rows"], "candidates": int(len(data["row"])),
                    "seconds": figures.seconds(time.perf_counter() - t0)})
        return
    a, b = (int(x) for x in attrs["rows"].split(":"))
    out_console.print(f"wrote {out}: {len(data['row'])} candidates of shard {attrs['shard']} (pool rows {a:,}..{b - 1:,}) "
                      f"for {attrs['strategy']}; merge every shard's with alsel select --candidates")


def merge_candidates_cmd(out, budget, candidates, csv, labelstudio, image_url_prefix, document_root, html_page,
                         paired, unpaired, as_json, device, given) -> None:
    """select --candidates c0.h5 c1.h5 ...: the merge of a sharded selection (SPEC §10)."""
    if given:
        raise AlselError(f"--candidates merges shards made with their own strategy and pool; leave out {given[0]}")
    if html_page is not None and unpaired is None:
        raise AlselError("--html: give the pool (--unpaired POOL.h5): the page shows its photos and maps it")
    for o in (out, csv, labelstudio, html_page):
        if o is not None:
            output.check_output(o, (*candidates, paired, unpaired))
    sel = strategies.merge_shards(candidates, resolve_device(device.value))
    if budget is not None and budget != int(sel.attrs["budget"]):
        raise AlselError(f"{candidates[0]}: the shards chose for --budget {sel.attrs['budget']}, not {budget}")
    with contextlib.ExitStack() as stack:
        page = None
        if html_page is not None:
            from alsel.merge import _check_selection
            from alsel.page import page_html

            pool = stack.enter_context(store.open_store(unpaired))
            _check_selection(sel, pool, str(sel.attrs["select"]), candidates[0])
            pst = stack.enter_context(store.open_store(paired, need="paired")) if paired else None
            page = (html_page, page_html(sel, pool, pst))
        selection.save_selection(out, sel, csv, inputs=(*candidates, paired, unpaired), created_by=CREATED_BY,
                                 labelstudio=labelstudio, image_url_prefix=image_url_prefix,
                                 document_root=document_root, page=page)
    for note in sel.notes:
        err_console.print(f"note: {note}", markup=False, soft_wrap=True)
    if as_json:
        print_json({"wrote": out, "kind": "selection", "strategy": sel.attrs["strategy"], "shards": sel.attrs["shards"],
                    "budget": int(sel.attrs["budget"]), "fill_count": int(sel.attrs["fill_count"]),
                    "selected": [str(i) for i in sel.ids]})
        return
    show_selection(out, sel)


@command("strategies")
def strategies_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False):
    """List the selection strategies: name, what each needs, its option tokens, what it does, its paper.

    Example: alsel strategies
    """
    rows = strategies.describe()
    if as_json:
        print_json(rows)
        return
    table = Table("name", "needs", "options (tokens)", "what it does", "paper", title="strategies",
                  caption="and auto, in select (its default) and simulate: `alsel advise` on the paired store, "
                          "then the strategy it finds reliably ahead of random, else --fallback "
                          f"({strategies.AUTO_FALLBACK})")
    for r in rows:
        table.add_row(r["name"], "; ".join(r["needs"]), " ".join(r["options"]), r["summary"], r["paper"])
    out_console.print(table)


@command("advise")
def advise_cmd(
    paired: Paired, unpaired: Unpaired,
    budget: Annotated[int, typer.Option(help="Items you will annotate next (B).", show_default=False)],
    out: Annotated[str, typer.Option("--out", help="The advice file (JSON; select --strategy auto --advice reads "
                                                   "it).", show_default=False)],
    rounds: Annotated[int, typer.Option(help="Rounds simulated on each split.")] = 1,
    strategy_list: Annotated[Optional[str], typer.Option("--strategies", show_default=False, help=(
        "Comma list of candidate strategies (random is the baseline) [default: coreset, typiclust, probcover, "
        "hn, hn-density, schedule, hn-learnability]."))] = None,
    splits: Annotated[int, typer.Option(help="Splits of the paired store (the standard error is over them).")] = 6,
    max_pairs: Annotated[int, typer.Option("--max-pairs", help="At most this many paired images are used (a "
                                                                 "seeded sample): a cap on the cost.")] = 1000,
    init: InitOpt = "identity", learner: LearnerOpt = "linear",
    seed: Annotated[int, typer.Option(help="Seed of the splits, the heads and the selections.")] = 0,
    fallback: FallbackOpt = None,
    device: Device = DeviceName.auto, chunk_size: ChunkSize = None, as_json: JsonOpt = False,
):
    """Which strategy to use on your data: each candidate's gain over random at this budget, measured by
    self-simulation on splits of the paired store (a start, a pseudo-pool whose captions are known, a
    held-out test), with the learner `train` uses; one recommendation, or, when no strategy is reliably
    ahead of random, the fallback (--fallback).

    Example: alsel advise --paired paired.h5 --unpaired pool.h5 --budget 25 --out advice.json
    """
    from alsel.advise import CANDIDATES, AdviceConfig, advise, save_advice

    output.check_output(out, (paired, unpaired))
    head_cfg = heads.TrainConfig(init=init, learner=learner)
    candidates = tuple(s.strip() for s in strategy_list.split(",") if s.strip()) if strategy_list else CANDIDATES
    cfg = AdviceConfig(budget=budget, rounds=rounds, candidates=candidates, splits=splits, max_pairs=max_pairs,
                       head=head_cfg, seed=seed, device=str(resolve_device(device.value)), chunk_size=chunk_size,
                       fallback=fallback or strategies.AUTO_FALLBACK)
    with store.open_store(paired, need="paired") as pst, store.open_store(unpaired, need="images") as pool:
        store.check_compatible(pst, pool)
        cfg = cfg.check()
        cfg = dataclasses.replace(cfg, head=head_cfg.check(pst.d))
        total = splits * (1 + len(cfg.candidates)) * (rounds + 1)
        with progress_bar("advise", total, "evaluations", extra=lambda f: f["last"]) as step:
            result = advise(pst, pool, cfg, lambda msg: step(1, last=msg))
        save_advice(out, result, inputs=(paired, unpaired))
    if as_json:
        print_json({"wrote": out, **{k: v for k, v in result.as_dict().items() if k != "per_split"}})
        return
    table = Table("strategy", "R-sum vs random (mean ± SE)", "splits ahead",
                  title=f"advice for {budget} items: {result.plan.describe()}; {splits} splits, "
                        f"{rounds} round(s), {learner} head from {init}")
    for r in result.table:
        table.add_row(r["strategy"], f"{r['gain_mean']:+.1f} ± {r['gain_se']:.1f}", f"{r['ahead']}/{r['splits']}")
    out_console.print(table)
    verdict = f"use {result.recommendation}"
    out_console.print(f"{verdict}: {result.confidence()}; wrote {out} in {result.seconds:.0f} s "
                      f"(alsel select --strategy auto --advice {out} uses it)")


@command("html")
def html_cmd(
    selection_path: Annotated[str, typer.Option("--selection", help="A selection (alsel select).", show_default=False)],
    unpaired: Unpaired, out: Annotated[str, typer.Option("--out", help="Output HTML page (written atomically).",
                                                         show_default=False)],
    paired: Annotated[Optional[str], typer.Option("--paired", show_default=False,
                                                  help="The paired store (shown on the map).")] = None,
):
    """The batch as one self-contained HTML page (what `select --html` writes) for an existing selection.

    Thumbnails in rank order with id, rank, score and the strategy's reason in words; a PCA map of the paired
    items, the pool and the batch; the strategy, budget and fill share. Opens offline in a browser.

    Example: alsel html --selection batch.h5 --unpaired pool.h5 --paired paired.h5 --out batch.html
    """
    from alsel.merge import _check_selection
    from alsel.page import write_page

    output.check_output(out, (selection_path, unpaired, paired))
    sel = selection.read_selection(selection_path)
    select = str(sel.attrs.get("select", "images"))
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(store.open_store(unpaired, need=select))
        _check_selection(sel, pool, select, selection_path)
        pst = stack.enter_context(store.open_store(paired, need="paired")) if paired else None
        if pst is not None:
            store.check_compatible(pst, pool)
        write_page(out, sel, pool, pst, inputs=(selection_path, unpaired, paired))
    out_console.print(f"wrote {out}: {len(sel.rows)} {select} by {sel.attrs.get('strategy', '?')}")


def show_selection(out: str, sel) -> None:
    show = min(len(sel.rows), 10)
    table = Table("rank", "id", "row", "score", title=f"{out}: {len(sel.rows)} selected ({sel.attrs['strategy']}), top {show}")
    for r in range(show):
        s = sel.score[r]
        table.add_row(str(r + 1), str(sel.ids[r]), str(sel.rows[r]), "" if np.isnan(s) else f"{s:.6g}")
    out_console.print(table)


@command()
def train(
    paired: Paired, out: Annotated[str, typer.Option("--out", help="Output head.pt (written atomically).", show_default=False)],
    init: InitOpt = "identity", dim: DimOpt = None, margin: HeadMargin = 0.2, epochs: EpochsOpt = None,
    batch_size: HeadBatch = 128, lr: LrOpt = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, held-out split and batch order.")] = 0,
    val: Annotated[Optional[str], typer.Option("--val", show_default=False,
                                               help="Paired validation store instead of the held-out split: "
                                                    "keep the best epoch by its MRR.")] = None,
    patience: PatienceOpt = 10, val_split: ValSplitOpt = 0.2, anchor: AnchorOpt = None,
    learner: LearnerOpt = "linear", device: Device = DeviceName.auto,
    objective: Annotated[str, typer.Option(help="retrieval: one linear map per modality, VSE++ max-of-hinges "
                                                "loss; labels: the ASCMR probabilistic head (needs /images/labels "
                                                "and /texts/labels).")] = "retrieval",
    samples: SamplesOpt = 8, kl: KlOpt = 1e-3, steps: StepsOpt = 0, as_json: JsonOpt = False,
):
    """Fit a retrieval head (one linear map per modality, VSE++ loss) on a paired store, or with
    --objective labels the ASCMR probabilistic head (Gaussian embeddings + multi-label classifier).

    Example: alsel train --paired paired.h5 --out head.pt --init random --dim 256 --epochs 30 --val val.h5
    """
    output.check_output(out, (paired, val))
    dev = resolve_device(device.value)
    if objective not in ("retrieval", "labels"):
        raise AlselError(f"--objective {objective!r}: expected retrieval or labels")
    if objective == "labels":
        train_labels(paired, out, dim, margin, LABEL_EPOCHS if epochs is None else epochs, batch_size, lr, seed,
                     samples, kl, steps, dev, as_json)
        return
    config = heads.TrainConfig(init=init, dim=dim, margin=margin, epochs=epochs, batch_size=batch_size, lr=lr,
                               seed=seed, patience=patience, val_split=val_split, anchor=anchor, learner=learner)
    with contextlib.ExitStack() as stack:
        st = stack.enter_context(store.open_store(paired, need="paired"))
        config = config.check(st.d)
        vst = stack.enter_context(store.open_store(val, need="paired")) if val else None
        if vst is not None:
            store.check_compatible(st, vst)
        p = store.load_paired(st)
        t0 = time.perf_counter()
        with progress_bar("train", None, "steps", extra=lambda f: f"loss {f['loss']:.4f}") as advance:
            head, hist = heads.train_head(p, config, dev, vst, lambda step, loss: advance(1, loss=loss))
        dt = time.perf_counter() - t0
        heads.save_head(out, head, inputs=(paired, val))
    if as_json:
        print_json({"wrote": out, "kind": "head", "learner": head.learner, "d_in": head.d_in, "dim": head.dim, "epochs": hist.best_epoch,
                    "anchor": hist.anchor, "steps": hist.steps,
                    "final_loss": figures.sig(hist.loss[-1]) if hist.loss else None,
                    "best_val_mrr": figures.sig(max(hist.val_mrr)) if hist.val_mrr else None,
                    "seconds": figures.seconds(dt)})
        return
    msg = f"wrote {out}: {head.learner} {head.d_in} -> {head.dim}, {hist.best_epoch} epochs (anchor {hist.anchor:g}), " \
          f"{hist.steps} steps in {dt:.1f} s"
    if hist.loss:
        msg += f", final loss {hist.loss[-1]:.4f} per pair"
    if hist.val_mrr:
        where = "validation" if val else f"{hist.val_images} held-out images"
        msg += f", best MRR on {where} {max(hist.val_mrr):.4f}"
    out_console.print(msg)


def train_labels(paired, out, dim, margin, epochs, batch_size, lr, seed, samples, kl, steps, dev, as_json) -> None:
    from alsel import probhead

    config = probhead.ProbConfig(dim=dim or 64, samples=samples, epochs=epochs, steps=steps, batch_size=batch_size,
                                 lr=lr, margin=margin, kl=kl, seed=seed).check()
    with store.open_store(paired, need="paired") as st:
        yi, yt = metrics.store_labels(st, "images"), metrics.store_labels(st, "texts")
        p = store.load_paired(st)
    t0 = time.perf_counter()
    epochs = probhead.prob_epochs(config, len(p.texts))
    with progress_bar("train (labels)", epochs, "epochs") as advance:
        head, losses = probhead.train_prob_head(p.images, p.texts, p.text_image, yi, yt, config, dev, advance)
    probhead.save_prob_head(out, head, inputs=(paired,))
    if as_json:
        print_json({"wrote": out, "kind": "probabilistic head", "d_in": head.d_in, "dim": config.dim,
                    "classes": int(yi.shape[1]), "epochs": epochs,
                    "final_loss": figures.sig(losses[-1]) if losses else None,
                    "seconds": figures.seconds(time.perf_counter() - t0)})
        return
    final = f", final loss {losses[-1]:.4f}" if losses else ""
    out_console.print(f"wrote {out}: probabilistic head {head.d_in} -> {config.dim}, {yi.shape[1]} classes, "
                      f"{epochs} epochs in {time.perf_counter() - t0:.1f} s{final}")


@command("eval")
def eval_cmd(
    test: Annotated[str, typer.Option("--test", help="Paired test store.", show_default=False)],
    head: HeadOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Device = DeviceName.auto, chunk_size: ChunkSize = None,
    labels: Annotated[bool, typer.Option("--labels", help="Also mAP@all both ways: relevant = shares a class "
                                                          "label (/images/labels, /texts/labels).")] = False,
):
    """Recall@1/5/10 image→text and text→image, R-sum and R@1-sum, in percent (ties count against the query).

    Example: alsel eval --test test.h5 --head head.pt --json
    """
    dev = resolve_device(device.value)
    with store.open_store(test, need="paired") as st:
        head_model = None
        if head:
            from alsel import probhead

            head_model = probhead.load_prob_head(head, st) if probhead.is_prob_head(head) else heads.load_head(head, st)
        result = metrics.evaluate(st, dev, head_model, chunk_size, labels=labels)
        n_i, n_t = st.images.n, st.texts.n
    keys = metrics.KEYS + (metrics.MAP_KEYS if labels else ())
    if as_json:
        print_json({k: figures.sig(result[k]) if k in metrics.MAP_KEYS else figures.percent(result[k]) for k in keys})
        return
    table = Table("direction", "R@1", "R@5", "R@10", title=f"{test}: {n_i} images, {n_t} captions"
                  + (f", head {head}" if head else ", raw embeddings"))
    for d, name in (("i2t", "image→text"), ("t2i", "text→image")):
        table.add_row(name, *(f"{result[f'{d}_r{k}']:.1f}" for k in metrics.KS))
    out_console.print(table)
    out_console.print(f"R-sum {result['rsum']:.1f}   R@1-sum {result['r1sum']:.1f}")
    if labels:
        out_console.print(f"mAP@all image→text {result['i2t_map']:.4f}   text→image {result['t2i_map']:.4f}")


@command("merge")
def merge_cmd(
    paired: Paired, unpaired: Unpaired,
    selection_path: Annotated[str, typer.Option("--selection", help="The selection made on --unpaired.",
                                                show_default=False)],
    out_paired: Annotated[str, typer.Option("--out-paired", help="New paired store.", show_default=False)],
    out_pool: Annotated[str, typer.Option("--out-pool", help="Remaining pool.", show_default=False)],
    captions: Annotated[Optional[str], typer.Option("--captions", show_default=False, help=(
        "The new captions: CSV or JSONL with id (the selected image's id) and text, or the Label Studio JSON "
        "export of the --labelstudio tasks. Only the captions are embedded; the images come from the pool."))] = None,
    annotations: Annotated[Optional[str], typer.Option(show_default=False, help=(
        "Instead of --captions: a store with the new annotations (e.g. from alsel embed), as for selected "
        "texts or label annotations."))] = None,
    model: Annotated[Optional[str], typer.Option(show_default="the model the paired store records", help=(
        "--captions: open_clip model name."))] = None,
    pretrained: Annotated[Optional[str], typer.Option(show_default="as the paired store records", help=(
        "--captions: open_clip tag, a local checkpoint file, or none."))] = None,
    model_config: Annotated[Optional[str], typer.Option("--model-config", show_default=False,
                                                        help="--captions: open_clip model config JSON.")] = None,
    seed: Annotated[int, typer.Option(help="--captions with --pretrained none: seed of the random init.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="--captions: captions per forward pass.")] = 64,
    ignore_extra: Annotated[bool, typer.Option("--ignore-extra",
                                               help="Leave out annotations of items that were not selected.")] = False,
    skipped: Annotated[str, typer.Option("--skipped", help=(
        "keep: a selected item that came back without a caption (or only cancelled annotations) stays in the "
        "pool, marked skipped, and is never selected again; error: stop instead."))] = "keep",
    device: Device = DeviceName.auto, as_json: JsonOpt = False,
):
    """Move the selected, now captioned pool items into the paired store; the rest stays in the pool.

    Examples: alsel merge --paired p.h5 --unpaired u.h5 --selection sel.h5 --captions new.csv --out-paired p2.h5 --out-pool u2.h5
              alsel merge --paired p.h5 --unpaired u.h5 --selection sel.h5 --annotations new.h5 --out-paired p2.h5 --out-pool u2.h5
    """
    from alsel.merge import merge, merge_captions

    if (captions is None) == (annotations is None):
        raise AlselError("merge: give the new captions with --captions FILE, or an annotations store with "
                         "--annotations STORE (one of the two)")
    if annotations is not None and (model or pretrained or model_config):
        raise AlselError("merge: --model, --pretrained and --model-config are for --captions (embedding them)")
    t0 = time.perf_counter()
    if captions is not None:
        spec = None
        if model or pretrained or model_config:
            spec = embed_spec(model, pretrained, model_config, seed, "fp32")
        with progress_bar("merge: embed captions", None, "captions", lazy=True) as advance:
            counts = merge_captions(paired, unpaired, selection_path, captions, out_paired, out_pool, spec,
                                    resolve_device(device.value), batch_size, ignore_extra, CREATED_BY, advance,
                                    skipped=skipped)
    else:
        counts = merge(paired, unpaired, selection_path, annotations, out_paired, out_pool, ignore_extra, CREATED_BY,
                       skipped=skipped)
    for note in counts.pop("notes", []):
        err_console.print(f"note: {note}", markup=False, soft_wrap=True)
    if as_json:
        print_json({"wrote": [out_paired, out_pool], **counts, "seconds": figures.seconds(time.perf_counter() - t0)})
        return
    n_skipped = counts["skipped"]
    what = "photos" if counts.get("new_images") or captions is not None else "items"
    skipped_part = ""
    if n_skipped:
        cancelled = f", {counts['cancelled']} cancelled in Label Studio" if counts.get("cancelled") else ""
        shown = ", ".join(counts["skipped_ids"][:5]) + (" ..." if n_skipped > 5 else "")
        skipped_part = (f"; {n_skipped} skipped (no caption{cancelled}: {shown}), kept in the pool and never "
                        f"selected again")
    out_console.print(f"wrote {out_paired}: {counts['paired_images']} images, {counts['paired_texts']} texts "
                      f"(+{counts['new_images']} images, +{counts['new_texts']} texts); {out_pool}: "
                      f"{counts['pool']} {what if what == 'items' else 'items'} left{skipped_part}")


labelstudio_app = typer.Typer(no_args_is_help=True, help=(
    "Label Studio over its REST API: push a batch as captioning tasks (project, local-files storage, import), "
    "pull the annotations back for `alsel merge --captions`."))
app.add_typer(labelstudio_app, name="labelstudio")
LsUrl = Annotated[str, typer.Option("--url", envvar="LABEL_STUDIO_URL", help="Label Studio's address.")]
LsToken = Annotated[Optional[str], typer.Option("--token", envvar="LABEL_STUDIO_API_KEY", show_default=False, help=(
    "API token (Account & Settings: a personal access token or a legacy token); better in LABEL_STUDIO_API_KEY "
    "than on the command line."))]
LsProject = Annotated[str, typer.Option("--project", help="Project title (or id).")]


@command("push", on=labelstudio_app)
def labelstudio_push(
    selection_path: Annotated[str, typer.Option("--selection", show_default=False, help=(
        "A selection of photos (alsel select on a pool made by alsel embed from a folder)."))],
    url: LsUrl = "http://localhost:8080", token: LsToken = None, project: LsProject = "alsel captions",
    document_root: Annotated[Optional[str], typer.Option("--document-root", show_default=(
        "$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, else the folder above the photos"), help=(
        "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."))] = None,
    as_json: JsonOpt = False,
):
    """Push a batch to Label Studio: create (or reuse) the captioning project, attach the photo folder as a
    local-files storage (not synced), check every photo is served, import the tasks (none twice).

    Example: alsel labelstudio push --selection batch.h5 --url http://localhost:8080 --project "alsel captions"
    """
    from alsel import labelstudio as ls

    sel = selection.read_selection(selection_path)
    t0 = time.perf_counter()
    r = ls.push(ls.LabelStudio(url, token), sel, project, document_root)
    if as_json:
        print_json({"project": r.project, "title": r.title, "imported": r.imported, "already_there": r.already,
                    "photos_served": r.photos_served, "storage": r.storage, "storage_created": r.storage_created,
                    "open": r.url, "seconds": figures.seconds(time.perf_counter() - t0)})
        return
    again = f" ({r.already} were there already)" if r.already else ""
    storage = "attached" if r.storage_created else "already attached"
    out_console.print(f"pushed {r.imported} tasks to project {r.project} {r.title!r}{again}; all "
                      f"{r.photos_served} photos are served (local-files storage {r.storage}, {storage}, not "
                      f"synced); caption them at {r.url}")


@command("pull", on=labelstudio_app)
def labelstudio_pull(
    out: Annotated[str, typer.Option("--out", show_default=False, help="The JSON export (written atomically).")],
    url: LsUrl = "http://localhost:8080", token: LsToken = None, project: LsProject = "alsel captions",
    as_json: JsonOpt = False,
):
    """Pull the project's JSON export (every task, every annotation), the file `alsel merge --captions` reads.

    Example: alsel labelstudio pull --project "alsel captions" --out export.json
    """
    from alsel import labelstudio as ls

    output.check_output(out)
    payload, counts = ls.pull(ls.LabelStudio(url, token), project)
    with output.atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    if as_json:
        print_json({"wrote": out, **counts})
        return
    out_console.print(f"wrote {out}: project {counts['project']} {counts['title']!r}, {counts['tasks']} tasks, "
                      f"{counts['annotated']} with captions, {counts['cancelled']} skipped (cancelled)")


@command()
@with_strategy_options(exclude=("batch_size", "margin"))  # hn's are the head's --batch-size and --margin
def simulate(
    oracle: Annotated[str, typer.Option(help="Paired store with the hidden annotations of every pool item.",
                                        show_default=False)],
    test: Annotated[str, typer.Option(help="Paired test store.", show_default=False)],
    out: Annotated[str, typer.Option("--out", help="Output folder (resumable).", show_default=False)],
    budget: Annotated[int, typer.Option(help="Items annotated per round.", show_default=False)],
    rounds: Annotated[int, typer.Option(help="Selection rounds.")] = 5,
    strategy_list: Annotated[str, typer.Option("--strategies", help=(
        f"Comma list of strategies with their option tokens, as `alsel select --strategy` takes them "
        f"({', '.join(strategies.names())}; e.g. hn-texts-top3-mini-counting, typiclust), or all (every "
        f"hard-negative variant with k = 1, 3 and the baselines on both sides). The strategy flags below apply "
        f"to every strategy that reads them."))] = "hn,random,coreset",
    seeds: Annotated[str, typer.Option(help="Seeds: 0,1,2 or 0-4.")] = "0",
    paired: Annotated[Optional[str], typer.Option("--paired", show_default=False,
                                                  help="Initial paired store (the oracle is then the pool).")] = None,
    initial: Annotated[float, typer.Option(help="Without --paired: fraction (<1) or count of oracle images paired at the start.")] = 0.1,
    init: InitOpt = "identity", dim: DimOpt = None, margin: HeadMargin = 0.2, epochs: EpochsOpt = None,
    batch_size: HeadBatch = 128, lr: LrOpt = 1e-3, patience: PatienceOpt = 10, val_split: ValSplitOpt = 0.2,
    anchor: AnchorOpt = None, learner: LearnerOpt = "linear",
    device: Device = DeviceName.auto, chunk_size: ChunkSize = None,
    annotate: Annotated[str, typer.Option(help="captions: pool images get captions (R-sum); labels: pool pairs get "
                                               "class labels, the ASCMR setting (probabilistic head, mAP@all).")] = "captions",
    kl: KlOpt = 1e-3, steps: StepsOpt = 0, fallback: FallbackOpt = None,
    strategy_options: dict = None,
):
    """The active-learning experiment: train, evaluate, select, annotate from the oracle, merge; repeat.

    Writes OUT/results.csv, OUT/curves.png, every round's stores and selections under OUT/runs/,
    and a mean ± std table on stdout. Re-running resumes.

    Example: alsel simulate --paired toy/paired.h5 --oracle toy/oracle.h5 --test toy/test.h5 --budget 50 --rounds 3 --strategies hn,random,coreset --seeds 0-2 --out sim
    """
    from alsel import simulate as sim

    dev = resolve_device(device.value)
    from alsel.probhead import ProbConfig

    sim.check_annotate(annotate)
    head_cfg = heads.TrainConfig(init=init, dim=dim, margin=margin, epochs=epochs, batch_size=batch_size, lr=lr,
                                 patience=patience, val_split=val_split, anchor=anchor, learner=learner)
    samples = strategy_options.get("samples") or strategies.Options().samples  # J of training and of selection
    cfg = sim.SimConfig(oracle=oracle, test=test, out=out, budget=budget, rounds=rounds,
                        strategies=sim.parse_strategies(strategy_list, strategy_options, head_cfg,
                                                        consumed=("samples",) if annotate == "labels" else ()),
                        seeds=sim.parse_seeds(seeds), paired=paired, initial=initial, head=head_cfg, device=str(dev),
                        chunk_size=chunk_size, annotate=annotate,
                        auto_fallback=fallback or strategies.AUTO_FALLBACK,
                        prob=ProbConfig(dim=dim or 64, samples=samples, epochs=LABEL_EPOCHS if epochs is None else epochs,
                                        steps=steps,
                                        batch_size=batch_size, lr=lr, margin=margin, kl=kl))
    if fallback is not None and sim.AUTO not in cfg.strategies:
        raise AlselError("--fallback goes with auto in --strategies (what auto runs when no candidate is reliably "
                         "ahead of random)")
    sim.check_setting(cfg)
    if not cfg.labels:
        with store.open_store(paired or oracle, need="paired") as st:
            cfg.head = head_cfg.check(st.d)
    total = len(cfg.strategies) * len(cfg.seeds) * (rounds + 1)
    _STOP["kept"] = f"finished rounds are kept in {out}; run the same command to continue"
    with progress_bar("simulate", total, "evaluations", extra=lambda f: f["last"]) as advance:
        rows = sim.simulate(cfg, lambda msg: advance(1, last=msg))
    sim.plot_curves(rows, os.path.join(out, "curves.png"), title=os.path.basename(os.path.normpath(out)))
    for metric, label in sim.panels(rows):
        table = Table("strategy", *[f"r{r} ({r * budget})" for r in range(rounds + 1)],
                      title=f"{label}, mean ± std over {len(cfg.seeds)} seed(s); columns: round (annotated items)")
        summary = sim.summarize(rows, metric)
        fmt = "{:.4f} ± {:.4f}" if metric == "map" else "{:.1f} ± {:.1f}"
        for name in dict.fromkeys(s["strategy"] for s in summary):
            table.add_row(name, *[fmt.format(s["mean"], s["std"]) for s in summary if s["strategy"] == name])
        out_console.print(table)
    out_console.print(f"wrote {os.path.join(out, 'results.csv')} and {os.path.join(out, 'curves.png')}")


# --------------------------------------------------------------------------- entry point


def _expand_multi(argv: list[str]) -> list[str]:
    """Let `--scores a.h5 b.h5 c.h5` (and shell globs) mean `--scores a.h5 --scores b.h5 ...`; the same for
    --candidates."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in ("--scores", "--candidates"):
            flag = argv[i]
            i += 1
            first = True
            while i < len(argv) and not argv[i].startswith("-"):
                if not first:
                    out.append(flag)
                out.append(argv[i])
                first = False
                i += 1
            continue
        i += 1
    return out


_STOP = {"cooperative": False, "requested": 0, "raised": 0, "kept": "nothing was written"}
SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextlib.contextmanager
def cooperative_stop() -> Iterator:
    """While active, the first SIGINT or SIGTERM only requests a stop, which the library honours after the
    current chunk (progress on disk, then alsel.errors.Interrupted); a second one stops at once."""
    _STOP.update(cooperative=True, requested=0)
    try:
        yield lambda: bool(_STOP["requested"])
    finally:
        _STOP["cooperative"] = False


class Stopped(BaseException):
    """A signal outside a cooperative section: unwinds through the atomic writers (which remove their
    temporary files) to main, which prints one line and exits 130 or 143."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


USAGE_ERRORS = tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})


def _on_signal(signum, frame):
    if _STOP["cooperative"] and not _STOP["requested"]:
        _STOP["requested"] = signum  # finish the chunk, record progress, then stop
        return
    _STOP["raised"] = signum
    raise Stopped(signum)


def _stop_if_lost() -> None:
    """Raise Stopped again at the next progress step when the signal handler's one was lost: a handler
    that runs inside a finaliser (a __del__ or weakref callback) has its exception printed and dropped."""
    if _STOP.get("raised") and not _STOP["cooperative"]:
        raise Stopped(_STOP["raised"])


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"


def slurm_threads(environ) -> int | None:
    """The CPU threads a SLURM step was given (--cpus-per-task, else the job's CPUs on this node), where
    torch would take more (a cluster that does not bind tasks to their CPUs, TaskPlugin=task/none: every
    task then sees all cores, and two one-CPU tasks ran 1.8x slower side by side with two OpenMP threads
    each); None where OMP_NUM_THREADS is set (the user's word) or outside SLURM."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        with contextlib.suppress(ValueError):
            n = int(environ.get(key, ""))
            if n > 0:
                return n if n < _cpus_seen() else None
    return None


def _cpus_seen() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def _limit_threads() -> None:
    """Apply slurm_threads before torch loads (it reads OMP_NUM_THREADS once), or to torch if loaded."""
    n = slurm_threads(os.environ)
    if n is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 1, 2, or 130/143 when stopped by SIGINT/SIGTERM)."""
    global CREATED_BY
    _limit_threads()
    argv = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    CREATED_BY = shlex.join(["alsel"] + argv)
    _QUIET["on"] = False
    _STOP.update(cooperative=False, requested=0, raised=0, kept="nothing was written")
    previous = {}
    with contextlib.suppress(ValueError):  # not in the main thread
        for s in SIGNAL_CODES:
            previous[s] = signal.signal(s, _on_signal)
    try:
        rv = app(args=_expand_multi(argv), prog_name="alsel", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return SIGNAL_CODES.get(_STOP["requested"], 143)
    except (Stopped, KeyboardInterrupt, typer.Abort) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"stopped ({_signal_name(signum)}): {_STOP['kept']}", file=sys.stderr)
        return SIGNAL_CODES[signum]
    except AlselError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except USAGE_ERRORS as e:  # click's (or typer's vendored click's) parse errors
        msg = " ".join(e.format_message().split())
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        print(f"error: {where}{msg}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        short = " ".join(str(e).split())[:160] or type(e).__name__
        damaged = _damaged_input(e)
        failure = output.write_failure(damaged or "output", e)
        if failure is not None and isinstance(e, OSError):
            print(f"error: {failure}", file=sys.stderr)
            return 2
        if damaged is not None:
            print(f"error: {damaged}: damaged or malformed HDF5 content ({short})", file=sys.stderr)
            return 2
        if os.environ.get("ALSEL_DEBUG"):
            raise
        print(f"error: internal error ({type(e).__name__}: {short}); set ALSEL_DEBUG=1 for the traceback and "
              f"please report it", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _damaged_input(e: BaseException) -> str | None:
    """The HDF5 file an unexpected failure inside h5py came from (a corrupted or malformed file): the
    innermost alsel reader or existing .h5 path among the failing frames' locals."""
    import h5py

    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not any(f"{os.sep}h5py{os.sep}" in f.f_code.co_filename for f in frames):
        return None
    for frame in reversed(frames):
        for v in list(frame.f_locals.values()):
            name = None
            if isinstance(v, (h5py.File, h5py.Group, h5py.Dataset)):
                continue  # touching a failed HDF5 object can crash the interpreter
            if isinstance(getattr(v, "path", None), str) and not isinstance(v, str):
                name = v.path
            elif isinstance(v, str) and v.endswith((".h5", ".hdf5")) and os.path.isfile(v):
                name = v
            if name:
                return name
    return "an input file"


def entry() -> None:
    sys.exit(main())


for _sig, _handler in _STARTUP_HANDLERS.items():  # importers (tests, notebooks) keep their own handlers
    signal.signal(_sig, _handler)

if __name__ == "__main__":
    entry()
