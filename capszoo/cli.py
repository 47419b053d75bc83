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
    """capszoo: a model zoo on Apache MXNet (CapsNets and LeNet for digits): classify, inspect, train, export."""


@main.command("list")
@click.argument("pattern", required=False, default="*")
@click.option("--pretrained", is_flag=True, help="Only the models with published weights.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(pattern, pretrained, as_json):
    """List the models (optionally matching a shell PATTERN)."""
    from ._registry import get_card, list_models

    names = list_models(pattern, pretrained=pretrained)
    if not names and not as_json:
        what = "model with published weights" if pretrained else "model"
        raise click.ClickException(f"no {what} matches {pattern!r}; run `capszoo list` to see all models")
    if as_json:
        click.echo(json.dumps([get_card(n).to_dict() for n in names], indent=2, default=str))
        return
    width = max((len(n) for n in names), default=0)
    for n in names:
        card = get_card(n)
        acc = card.metrics.get("test_accuracy")
        weights = (f"test accuracy {100 * acc:.2f} %" if acc is not None else "weights: yes") \
            if card.weights else "weights: not published yet"
        click.echo(f"{card.name:<{width}}  {card.display_name}  ({card.num_params:,} parameters; {weights})")


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="A .params file to report on.")
@click.option("--graphic", default=None, metavar="PATH",
              help="Also draw the summary graphic (sub-nets as boxes) into PATH: .png, .jpg or .svg.")
def info_cmd(name, as_json, weights, graphic):
    """Layers, parameter count, trained size and arrays of model NAME (like NetInformation)."""
    from ._info import format_info, net_info
    from ._hubrepo import card_for

    card = card_for(name)
    if graphic is not None:
        from ._visualize import check_output_path
        check_output_path(graphic, svg=True)
    net = card.build()
    path = weights
    if path is None and card.weights is not None:
        from ._hub import resolve_weights
        try:
            path = resolve_weights(card, local_only=True)
        except CapszooError:
            path = None
    info = net_info(net, name=card.name, weights_path=path)
    if graphic is not None:
        from ._visualize import save_summary
        save_summary(info, graphic)
        click.echo(f"wrote {graphic}", err=True)
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
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "int8"]), default="float32", show_default=True,
              help="Inference precision (bfloat16 needs a CPU with avx512_bf16; int8 is calibrated on real digits).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "mxnet"]), default="auto", show_default=True,
              help="Engine: auto runs the net on onnxruntime when it can (float32, one CPU, a shipped graph; "
                   "with the published weights without importing MXNet: fast start), else on MXNet; "
                   "onnxruntime and mxnet force one.")
def classify_cmd(name, files, top, as_json, weights, polarity, ctx, dtype, backend):
    """Classify digit image FILES with model NAME."""
    from ._api import load

    # The model's engine policy: onnxruntime (no MXNet import) when it can run the net.
    model = load(name, ctx=ctx, weights=weights, dtype=dtype, backend=backend)
    results = model(list(files), prop="TopProbabilities", top=top, polarity=polarity)
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
@click.option("--weights", type=click.Path(dir_okay=False), help="A .params file instead of the published weights.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=500, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "int8"]), default="float32", show_default=True,
              help="Inference precision.")
def evaluate_cmd(model, data_dir, weights, as_json, ctx, batch_size, dtype):
    """Test accuracy of MODEL (a name; or a .params file of capsnet-mnist) on the MNIST test set."""
    from ._api import load
    from ._evaluate import evaluate
    from .data import load_mnist

    if model.endswith(".params") or os.path.isfile(model):
        if weights is not None:
            raise click.UsageError("give MODEL as a name with --weights, or a .params file alone")
        model, weights = "capsnet-mnist", model
    m = load(model, ctx=ctx, weights=weights, dtype=dtype)
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
@click.option("--init-weights", type=click.Path(dir_okay=False), default=None,
              help="Start a new run from these .params weights instead of the seeded initialization.")
@click.option("--init-log", type=click.Path(dir_okay=False), default=None,
              help="With --init-weights: the metrics.jsonl of the run those weights end; the new run continues "
                   "it from the epoch after its last (schedule, history, best epoch), with a fresh optimizer "
                   "state.")
@click.option("--kvstore", default=None,
              help="Gradient reduction: local, device (one machine; default device for GPUs, local for CPUs) or "
                   "dist_sync, dist_device_sync, dist_async (a parameter-server job started by capszoo launch).")
@click.option("--limit", type=click.IntRange(1, 60000), default=None, hidden=True,
              help="Use only the first N training images (quick runs).")
@click.option("--max-steps", type=click.IntRange(1, 10 ** 9), default=None, hidden=True,
              help="Cap steps per epoch (quick runs).")
@click.option("--validation-size", type=click.IntRange(0, 60000), default=None, hidden=True,
              help="Override the recipe's validation split size (quick runs).")
def train_cmd(recipe, ctx, epochs, batch_size, seed, data_dir, out_dir, resume, init_weights, init_log, kvstore,
              limit, max_steps, validation_size):
    """Train RECIPE (a bundled recipe name such as capsnet-mnist, or a .toml file)."""
    from ._context import parse_ctx
    from ._recipe import load_recipe
    from ._train import check_kvstore, train
    from .data import load_mnist

    rec = load_recipe(recipe)
    ctxs = parse_ctx(ctx)  # before any work: an unavailable GPU is reported now
    kvstore = check_kvstore(kvstore)  # an unknown name, or dist_* outside a launched job, is reported now
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
                   validation_size=validation_size, log=log, init_weights=init_weights, init_log=init_log)
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
@click.option("--verify-count", type=click.IntRange(1, 10000), default=10000, show_default=True,
              help="MNIST test images used by --verify.")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="int8 (ONNX only): quantized by onnxruntime, calibrated on the shipped training digits.")
@click.option("--coupling", is_flag=True,
              help="Capsule nets: add routing's coupling coefficients of every iteration as an extra output, "
                   "'coupling' (N, iterations, 1152, 10).")
def export_cmd(name, fmt, out_dir, prefix, slice_spec, weights, verify, data_dir, verify_count, dtype, coupling):
    """Export model NAME (or a slice of it) to MXNet symbol JSON + params or ONNX."""
    from ._export import export_model

    report = export_model(name, fmt=fmt, out_dir=out_dir, prefix=prefix, slice_spec=slice_spec, weights=weights,
                          verify=verify, data_dir=data_dir, verify_count=verify_count, dtype=dtype,
                          extra_outputs=("coupling",) if coupling else ())
    for f in report["files"]:
        click.echo(f"wrote {f['path']}  ({f['bytes']:,} bytes, sha256 {f['sha256'][:16]}...)")
    if verify:
        v = report["verification"]
        click.echo(f"verified in {v['runtime']}: max abs diff {v['max_abs_diff']:.3g}"
                   + (f", test accuracy {100 * v['accuracy']:.2f} %" if v.get("accuracy") is not None else ""))


_OUT_HELP = "Output picture: .png or .jpg (written atomically)."
_WEIGHTS_HELP = "A .params file instead of the published weights."
_POLARITY_CHOICE = click.Choice(["auto", "dark-on-light", "light-on-dark"])


@main.command("reconstruct")
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("-o", "--out", required=True, metavar="PATH", help=_OUT_HELP)
@click.option("--labels", default=None, help="True labels, one per image, comma-separated (e.g. 7,2,1).")
@click.option("--columns", type=click.IntRange(1, 100), default=None,
              help="Input/reconstruction pairs per row [default: up to 5].")
@click.option("--weights", type=click.Path(dir_okay=False), help=_WEIGHTS_HELP)
@click.option("--polarity", type=_POLARITY_CHOICE, default="auto", show_default=True,
              help="Ink polarity of the images.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
def reconstruct_cmd(name, images, out, labels, columns, weights, polarity, ctx):
    """Draw each of IMAGES beside its reconstruction by model NAME, with the predicted class."""
    from ._api import load
    from ._hubrepo import pinned_card
    from ._visualize import check_output_path, parse_labels, pixel_size, reconstruction_panel, save_image
    from .errors import InvalidInputError

    _, name = pinned_card(name)
    check_output_path(out)
    if not images:
        raise InvalidInputError("no images given; pass one or more IMAGE files")
    labs = parse_labels(labels, len(images)) if labels is not None else None
    model = load(name, ctx=ctx, weights=weights)
    panel = reconstruction_panel(model, list(images), labels=labs, columns=columns, polarity=polarity)
    save_image(panel, out)
    click.echo(f"wrote {out}  ({' x '.join(map(str, pixel_size(panel)))})")


@main.command("tweak")
@click.argument("name")
@click.argument("image", type=click.Path())
@click.option("--dims", default="all", show_default=True,
              help="Capsule dimensions to tweak, 1-based: 11,14,16 or all (one row each).")
@click.option("--range", "range_spec", default="-0.25:0.25:0.05", show_default=True,
              help="Offsets start:stop:step, stop included (one column each).")
@click.option("-o", "--out", required=True, metavar="PATH", help=_OUT_HELP)
@click.option("--scale", type=click.IntRange(1, 8), default=2, show_default=True, help="Cell enlargement.")
@click.option("--weights", type=click.Path(dir_okay=False), help=_WEIGHTS_HELP)
@click.option("--polarity", type=_POLARITY_CHOICE, default="auto", show_default=True, help="Ink polarity of the image.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
def tweak_cmd(name, image, dims, range_spec, out, scale, weights, polarity, ctx):
    """Grid of IMAGE's reconstructions with one capsule dimension shifted (rows: dims, columns: offsets)."""
    from ._api import load
    from ._hubrepo import pinned_card
    from ._visualize import check_output_path, parse_dims, parse_range, pixel_size, save_image, tweak_images

    _, name = pinned_card(name)
    check_output_path(out)
    dim_list = parse_dims(dims)
    offsets = parse_range(range_spec)
    model = load(name, ctx=ctx, weights=weights)
    _, grid = tweak_images(model, image, dims=dim_list, offsets=offsets, scale=scale, polarity=polarity)
    save_image(grid, out)
    click.echo(f"wrote {out}  ({len(dim_list)} dims x {len(offsets)} offsets, "
               f"{' x '.join(map(str, pixel_size(grid)))})")


@main.command("features")
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="MNIST folder: plot --samples test images coloured by their labels.")
@click.option("--samples", type=int, default=None, help="How many MNIST test images [default: 500].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sample choice and the drawing order.")
@click.option("-o", "--out", required=True, metavar="PATH", help=_OUT_HELP)
@click.option("--weights", type=click.Path(dir_okay=False), help=_WEIGHTS_HELP)
@click.option("--polarity", type=_POLARITY_CHOICE, default="auto", show_default=True,
              help="Ink polarity of the images.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
def features_cmd(name, images, data_dir, samples, seed, out, weights, polarity, ctx):
    """Feature-space plot: IMAGES (or MNIST test samples) placed by PCA of their 16-D capsules."""
    import numpy as np

    from ._api import load
    from ._hubrepo import pinned_card
    from ._visualize import check_output_path, feature_space_plot, pixel_size, save_image
    from .errors import InvalidInputError

    _, name = pinned_card(name)
    check_output_path(out)
    use_mnist = data_dir is not None or samples is not None
    if images and use_mnist:
        raise InvalidInputError("give either IMAGES or --data-dir/--samples (MNIST test images), not both")
    if not images and not use_mnist:
        raise InvalidInputError("no images given; pass IMAGE files, or --data-dir D [--samples N] "
                                "to plot MNIST test images")
    if seed < 0:
        raise InvalidInputError(f"--seed must be >= 0, got {seed}")
    if use_mnist:
        from .data import load_mnist

        n = 500 if samples is None else samples
        if n < 2:
            raise InvalidInputError(f"--samples must be at least 2, got {n}")
        data, labs = load_mnist("test", data_dir=data_dir)
        if n > len(data):
            raise InvalidInputError(f"--samples {n} is more than the {len(data)} MNIST test images")
        idx = np.sort(np.random.RandomState(seed).choice(len(data), n, replace=False))
        inputs, labels = data[idx], labs[idx]
    else:
        if len(images) < 2:
            raise InvalidInputError(f"a feature-space plot needs at least 2 images, got {len(images)}")
        inputs, labels = list(images), None
    model = load(name, ctx=ctx, weights=weights)
    plot = feature_space_plot(model, inputs, labels, seed=seed, polarity=polarity)
    save_image(plot, out)
    click.echo(f"wrote {out}  ({len(inputs)} images, {' x '.join(map(str, pixel_size(plot)))})")


@main.command("routing")
@click.argument("name")
@click.argument("image", type=click.Path())
@click.option("-o", "--out", required=True, metavar="PATH", help=_OUT_HELP)
@click.option("--scale", type=click.IntRange(2, 16), default=5, show_default=True, help="Pixels per capsule.")
@click.option("--weights", type=click.Path(dir_okay=False), help=_WEIGHTS_HELP)
@click.option("--polarity", type=_POLARITY_CHOICE, default="auto", show_default=True, help="Ink polarity of the image.")
@click.option("--ctx", default="cpu", show_default=True, help="Device(s): cpu, gpu:0, cpu:0,cpu:1 ...")
def routing_cmd(name, image, out, scale, weights, polarity, ctx):
    """Picture of routing by agreement for IMAGE in capsule net NAME: which primary capsules send their
    votes to the predicted class, per iteration."""
    from ._api import load
    from ._hubrepo import pinned_card
    from ._visualize import check_output_path, pixel_size, routing_figure, save_image
    from .errors import InvalidInputError

    card, name = pinned_card(name)
    if card.arch != "capsnet":
        raise InvalidInputError(f"{card.name} is not a capsule network: it has no routing to draw (its sub-nets: "
                                f"{', '.join(card.subnets)}); use a capsnet-* entry")
    check_output_path(out)
    model = load(name, ctx=ctx, weights=weights, backend="mxnet")
    fig = routing_figure(model, image, polarity=polarity, scale=scale)
    save_image(fig, out)
    click.echo(f"wrote {out}  ({' x '.join(map(str, pixel_size(fig)))})")


@main.command("launch", context_settings={"allow_interspersed_args": False})
@click.option("-n", "--workers", "num_workers", type=int, required=True, help="Number of workers (>= 1).")
@click.option("-s", "--servers", "num_servers", type=int, default=1, show_default=True,
              help="Number of parameter servers (>= 1).")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False), default=None,
              help="Host file, one [user@]host[:ssh_port] per line: servers and workers go round-robin over the "
                   "hosts through ssh; the scheduler runs here.")
@click.option("--local", is_flag=True, help="Run every process on this machine over 127.0.0.1 (the default).")
@click.option("--port", type=int, default=None, help="Scheduler port [default: a free one].")
@click.option("--scheduler-host", default=None,
              help="This machine's address as the hosts reach it (--hosts; default: worked out).")
@click.option("--interface", default=None, help="Network interface of the remote nodes (DMLC_INTERFACE).")
@click.option("--env", "env_vars", multiple=True, metavar="NAME[=VALUE]",
              help="Set (or, with NAME alone, forward) a variable for every process; repeatable.")
@click.option("--remote-dir", default=None, help="Directory to run in on the hosts [default: the current one].")
@click.option("--ssh", "ssh_cmd", default="ssh", show_default=True, help="ssh client command.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop the job (and fail) after this many seconds.")
@click.option("--dry-run", is_flag=True, help="Print the command line of every process and exit.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch_cmd(num_workers, num_servers, hosts_file, local, port, scheduler_host, interface, env_vars, remote_dir,
               ssh_cmd, timeout, dry_run, command):
    """Run COMMAND as the workers of an MXNet parameter-server job.

    \b
    Example (2 workers, 1 server, this machine):
      capszoo launch -n 2 -s 1 -- capszoo train capsnet-mnist --kvstore dist_sync
    See docs/distributed.md for several machines.
    """
    from ._launch import launch
    from .errors import DistributedError

    if local and hosts_file:
        raise DistributedError("--local and --hosts exclude each other: --local runs every process here")
    launch(list(command), num_workers=num_workers, num_servers=num_servers, hosts_file=hosts_file, port=port,
           scheduler_host=scheduler_host, interface=interface, env=env_vars, ssh=ssh_cmd, remote_dir=remote_dir,
           timeout=timeout, dry_run=dry_run)


@main.command("graph")
@click.argument("file", metavar="FILE|NAME")
@click.option("-o", "--out", required=True, metavar="PATH", help="Output picture: .svg or .png (written atomically).")
@click.option("--title", default=None, help="Heading of the picture [default: Node graph of FILE's or NAME's name].")
def graph_cmd(file, out, title):
    """Draw the node graph of model NAME, or of an exported MXNet symbol FILE (<prefix>-symbol.json), like
    NodeGraphPlot."""
    import pathlib

    from ._graph import check_graph_output, load_symbol_graph, save_graph

    check_graph_output(out)
    if not os.path.exists(file) and _is_model_name(file):
        from ._graph import model_symbol_json
        graph = load_symbol_graph(model_symbol_json(file))
        title = title or f"Node graph of {file}"
    else:
        graph = load_symbol_graph(pathlib.Path(file))  # always a path here, even if the name starts with "{"
    lay = save_graph(graph, out, title=title)
    if graph.unknown_ops:
        click.echo(f"note: operators not known to capszoo, drawn in red: {', '.join(graph.unknown_ops)}", err=True)
    click.echo(f"wrote {out}  ({lay.num_ops} operator nodes in {lay.columns} column{'s' if lay.columns > 1 else ''}, "
               f"{lay.size[0]} x {lay.size[1]})")


def _is_model_name(name):
    """True for a registered name or alias, and for an ``hf-hub:`` name (checked when it is read)."""
    from ._hubrepo import is_hub_name
    from ._registry import get_card
    from .errors import ModelNotFoundError
    if is_hub_name(name):
        return True
    try:
        get_card(name)
        return True
    except ModelNotFoundError:
        return False


@main.command("push")
@click.argument("name")
@click.option("--repo-id", required=True, metavar="OWNER/REPO", help="The Hub model repository (created if missing).")
@click.option("--revision", default=None, metavar="TAG",
              help="Tag for the uploaded commit [default: the card's weights.hf_revision].")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Build the repository folder only: no token needed, nothing uploaded.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to build in (new, empty or an earlier build) [default: $CAPSZOO_HOME/publish/NAME-SHA8].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="MNIST folder for verifying the exports (default: download into the cache).")
@click.option("--verify-count", type=click.IntRange(1, 10000), default=10000, show_default=True,
              help="MNIST test images each export is verified on.")
def push_cmd(name, repo_id, revision, private, dry_run, out_dir, data_dir, verify_count):
    """Publish entry NAME on the Hugging Face Hub: weights (.params and safetensors), MXNet and ONNX
    exports, config.json and a model card; tag the commit and record it in the entry's manifest.

    The token comes from HF_TOKEN or `hf auth login`.
    """
    from ._publish import push_to_hub

    res = push_to_hub(name, repo_id=repo_id, revision=revision, private=private, dry_run=dry_run, out_dir=out_dir,
                      data_dir=data_dir, verify_count=verify_count, log=lambda m: click.echo(m, err=True))
    for path, d in res.files.items():
        click.echo(f"{path}  ({d['size']:,} bytes, sha256 {d['sha256'][:16]}...)")
    if res.dry_run:
        click.echo(f"dry run: built {res.folder}; nothing uploaded (tag would be {res.repo_id}@{res.revision})")
    else:
        state = "tagged" if res.tagged else "tag already there"
        click.echo(f"published {res.repo_id}@{res.revision} (commit {res.commit}, {state}): {res.url}")
        click.echo(f"recorded in {res.manifest}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
