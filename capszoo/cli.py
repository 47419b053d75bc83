"""The ``capszoo`` command line: thin commands over the library.

User mistakes (unknown names, bad files, bad options) print one line on
stderr, ``Error: ...``, and exit with status 1; no traceback.
"""
from __future__ import annotations

import json
import os
import sys

import click

from . import _env  # noqa: F401
from .errors import CapszooError


class _Group(click.Group):
    """Turns capszoo errors into ``click.ClickException`` (one line, exit 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CapszooError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capszoo")
def main():
    """capszoo: pretrained CapsNet for digits on Apache MXNet; classify, inspect, train, export."""


@main.command("list")
@click.argument("pattern", required=False, default="*")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(pattern, as_json):
    """List the models (optionally matching a shell PATTERN)."""
    from ._registry import get_card, list_models

    names = list_models(pattern)
    if as_json:
        click.echo(json.dumps([get_card(n).to_dict() for n in names], indent=2, default=str))
        return
    for n in names:
        card = get_card(n)
        acc = card.metrics.get("test_accuracy")
        weights = (f"test accuracy {100 * acc:.2f} %" if acc is not None else "weights: yes") \
            if card.weights else "weights: not published yet"
        click.echo(f"{card.name:<16} {card.display_name}  ({card.num_params:,} parameters; {weights})")


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--weights", type=click.Path(dir_okay=False), help="A .params file to report on.")
def info_cmd(name, as_json, weights):
    """Layers, parameter count, trained size and arrays of model NAME (like NetInformation)."""
    from ._info import format_info, net_info
    from ._registry import get_card

    card = get_card(name)
    net = card.builder()
    path = weights
    if path is None and card.weights is not None:
        from ._hub import resolve_weights
        try:
            path = resolve_weights(card, local_only=True)
        except CapszooError:
            path = None
    info = net_info(net, name=card.name, weights_path=path)
    if as_json:
        d = info.to_dict()
        d["card"] = card.to_dict()
        click.echo(json.dumps(d, indent=2, default=str))
    else:
        click.echo(format_info(info))


@main.command("classify")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--top", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Show the K most probable classes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--weights", type=click.Path(dir_okay=False), help="A .params file instead of the published weights.")
@click.option("--polarity", type=click.Choice(["auto", "dark-on-light", "light-on-dark"]), default="auto",
              show_default=True, help="Ink polarity of the images.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
def classify_cmd(name, files, top, as_json, weights, polarity, ctx):
    """Classify digit image FILES with model NAME."""
    from ._api import load

    model = load(name, ctx=ctx, weights=weights)
    results = model(list(files), prop="TopProbabilities", top=max(top, 1), polarity=polarity)
    if as_json:
        click.echo(json.dumps([{"file": f, "class": r[0][0], "probability": r[0][1],
                                "top": [{"class": c, "probability": p} for c, p in r]}
                               for f, r in zip(files, results)], indent=2))
        return
    width = max(len(f) for f in files)
    for f, r in zip(files, results):
        best = f"{r[0][0]}  (p={r[0][1]:.3f})"
        rest = "" if top == 1 else "   top: " + ", ".join(f"{c}:{p:.3f}" for c, p in r)
        click.echo(f"{f:<{width}}  {best}{rest}")


@main.command("evaluate")
@click.argument("model")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the MNIST idx files (default: download into the cache).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=500, show_default=True)
def evaluate_cmd(model, data_dir, as_json, ctx, batch_size):
    """Test accuracy of MODEL (a name, or a .params file of capsnet-mnist) on the MNIST test set."""
    from ._api import load
    from ._evaluate import evaluate
    from .data import load_mnist

    if model.endswith(".params") or os.path.isfile(model):
        m = load("capsnet-mnist", ctx=ctx, weights=model)
    else:
        m = load(model, ctx=ctx)
    images, labels = load_mnist("test", data_dir=data_dir)
    result = evaluate(m, images, labels, batch_size=batch_size)
    if as_json:
        d = result.to_dict()
        d["model"] = m.card.name
        d["weights"] = m.weights_path
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(f"Model: {m.card.name}  weights: {m.weights_path}")
        click.echo(result.format())


@main.command("train")
@click.argument("recipe")
@click.option("--ctx", default="cpu", show_default=True,
              help="Devices for data parallelism: cpu | cpu:0,cpu:1 | gpu:0 | gpu:0,gpu:1 | gpu:all")
@click.option("--epochs", type=click.IntRange(1, 10000), default=None, help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(1, 100000), default=None, help="Override the recipe's batch size.")
@click.option("--seed", type=int, default=None, help="Override the recipe's seed.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the MNIST idx files (default: download into the cache).")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Run directory for checkpoints and metrics [default: runs/<recipe>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--kvstore", default=None, help="Gradient reduction: local, device, dist_sync, dist_async, dist_device_sync.")
@click.option("--limit", type=click.IntRange(1, 60000), default=None, hidden=True,
              help="Use only the first N training images (quick runs).")
@click.option("--max-steps", type=click.IntRange(1, 10 ** 9), default=None, hidden=True,
              help="Cap steps per epoch (quick runs).")
@click.option("--validation-size", type=click.IntRange(0, 60000), default=None, hidden=True,
              help="Override the recipe's validation split size (quick runs).")
def train_cmd(recipe, ctx, epochs, batch_size, seed, data_dir, out_dir, resume, kvstore, limit, max_steps,
              validation_size):
    """Train RECIPE (a bundled recipe name such as capsnet-mnist, or a .toml file)."""
    from ._context import parse_ctx
    from ._recipe import load_recipe
    from ._train import train
    from .data import load_mnist

    rec = load_recipe(recipe)
    ctxs = parse_ctx(ctx)  # before any work: an unavailable GPU is reported now
    out_dir = out_dir or os.path.join("runs", rec.name)
    images, labels = load_mnist("train", data_dir=data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]

    def log(m):
        click.echo(f"epoch {m['epoch']}: loss {m['train_loss']:.4f} train acc {100 * m['train_accuracy']:.2f} % "
                   f"val acc {100 * m['val_accuracy']:.2f} % {m['images_per_second']:.0f} img/s "
                   f"{m['epoch_seconds']:.0f} s")

    result = train(rec, data=(images, labels), ctx=ctxs, out_dir=out_dir, epochs=epochs, batch_size=batch_size,
                   seed=seed, resume=resume, kvstore=kvstore, max_steps_per_epoch=max_steps,
                   validation_size=validation_size, log=log)
    click.echo(f"best epoch {result.best_epoch}: validation accuracy {100 * result.best_val_accuracy:.2f} %; "
               f"weights: {os.path.join(result.out_dir, 'best.params')}")


@main.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["mxnet", "onnx"]), required=True, help="Target format.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--prefix", default=None, help="File name prefix [default: the model name, or model-slice].")
@click.option("--slice", "slice_spec", default=None,
              help="Export a slice: ReLUConv1:Pick (feature extractor), Reconstruct (reconstructor), A:B.")
@click.option("--weights", type=click.Path(dir_okay=False), help="A .params file instead of the published weights.")
@click.option("--verify", is_flag=True, help="Reload in the target runtime and report max abs diff and accuracy.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="MNIST folder for --verify (default: download into the cache).")
def export_cmd(name, fmt, out_dir, prefix, slice_spec, weights, verify, data_dir):
    """Export model NAME (or a slice of it) to MXNet symbol JSON + params or ONNX."""
    from ._export import export_model

    report = export_model(name, fmt=fmt, out_dir=out_dir, prefix=prefix, slice_spec=slice_spec, weights=weights,
                          verify=verify, data_dir=data_dir)
    for f in report["files"]:
        click.echo(f"wrote {f['path']}  ({f['bytes']:,} bytes, sha256 {f['sha256'][:16]}...)")
    if verify:
        v = report["verification"]
        click.echo(f"verified in {v['runtime']}: max abs diff {v['max_abs_diff']:.3g}"
                   + (f", test accuracy {100 * v['accuracy']:.2f} %" if v.get("accuracy") is not None else ""))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
