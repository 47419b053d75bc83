"""The README's and docs/'s figures are those of what they describe.

The sub-net tables and the `capszoo info` line (docs/models.md) are the nets'; the speed
figures (docs/speed.md) are those of the bench results file they name; the hardening table
(docs/reliability.md) is tests/hardening.json; the README's model and ablation tables are what
scripts/zoo_tables.py writes; every relative link resolves.  (The shipped-weights table is
generated, and checked in test_pretrained.py.)
"""
import os
import re

import pytest

import capszoo
from capszoo._info import format_info, net_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _section(path, heading):
    """The lines of ``path`` from the line ``heading`` (e.g. ``"## Speed"``) to the next heading of its level or
    above, outside code blocks (the end of the file if there is none)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, out, fenced = _read(path).splitlines(), None, False
    for line in lines:
        if out is None:
            out = [line] if line == heading else None
            continue
        fenced ^= line.startswith("```")
        m = re.match(r"(#+) ", line)
        if m and not fenced and len(m.group(1)) <= level:
            break
        out.append(line)
    if out is None:
        raise ValueError(f"{path} has no heading {heading!r}")
    return "\n".join(out) + "\n"


def _doc(name):
    return os.path.join(DOCS, name)


@pytest.mark.parametrize("name", ["capsnet-mnist", "lenet-mnist"])
def test_docs_subnet_table_is_the_nets(name):
    """docs/models.md's sub-net table of an entry: names, output shapes and parameter counts of its built net."""
    card = capszoo.get_card(name)
    section = _section(_doc("models.md"), f"## `{name}`")
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = []
    for row in rows:
        sub, _what, shape, params = (c.strip() for c in row.strip("|").split(" | "))
        table.append((sub.strip("`"), tuple(int(d) for d in re.findall(r"\d+", shape)),
                      int(params.replace(",", ""))))
    info = net_info(card.build())
    assert table == [(n, tuple(s), p) for n, s, p in info.subnets]
    assert info.num_params == card.num_params
    assert f"Total: **{info.num_params:,} parameters**, {info.num_params * 4 / 1e6:.0f} MB of fp32 weights" in section
    routing = card.arch_args.get("routing_iterations")
    if routing is not None:
        assert f"routing by agreement, {routing} iterations" in section


def test_docs_info_snippet_is_the_commands_first_line():
    card = capszoo.get_card("capsnet-mnist")
    section = _section(_doc("models.md"), "## `capszoo info`")
    snippet = section[section.index("$ capszoo info capsnet-mnist\n"):].splitlines()[1]
    path = None
    if card.weights is not None:
        from capszoo._hub import bundled_dir

        path = str(bundled_dir() / card.weights.filename)
    assert snippet == format_info(net_info(card.build(), weights_path=path)).splitlines()[0]


def _script(name):
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_zoo_tables_are_the_cards():
    """The README's model and ablation tables and docs/export.md's runtimes table are what
    scripts/zoo_tables.py writes from the cards, the logs and the result files (each between its markers, once)."""
    zt = _script("zoo_tables")
    assert zt.README == README
    for which, (path, begin, end) in zt.MARKERS.items():
        text = _read(path)
        assert text.count(begin) == 1 and text.count(end) == 1, which
        block = text[text.index(begin) + len(begin):text.index(end)]
        assert block == f"\n{zt.render(which)}\n", f"the {which} table is stale: run python scripts/zoo_tables.py"
    text = _read(README)
    assert text.index(zt.MARKERS["models"][2]) < text.index(zt.MARKERS["ablation"][1])
    runtimes = zt.render("runtimes")
    for name in capszoo.list_models():                    # every entry, in every runtime
        assert f"| `{name}` (" in runtimes, name
    assert "fail" not in runtimes and "refused" not in runtimes


def test_readme_lists_every_entry():
    text = _read(README)
    intro = text[:text.index("\n## Quick start\n")]
    for name in capszoo.list_models():
        assert f"`{name}`" in intro, name
    python = _section(README, "## Python in brief")
    assert f"the {len(capszoo.list_models())} entries" in python


def test_readme_prose_figures_are_their_sources():
    """The figures of the README's prose outside the generated blocks: each is its source's."""
    import math
    text = " ".join(_read(README).split())
    card = capszoo.get_card("capsnet-mnist")
    t = card.training
    assert (f"trained longer ({t['init']['best_epoch']} epochs, then {t['best_epoch']} of fine-tuning)" in text)
    errors = card.metrics["test_errors"]
    assert f"e.g. ±{round(math.sqrt(errors))} errors around {round(errors, -1)}" in text
    script = _read(os.path.join(REPO, "scripts", "make_figures.py"))
    samples = re.search(r'"--samples", type=int, default=(\d+)', script)
    assert f"the 16-D capsules of {samples.group(1)} test digits" in text
    dist = _read(os.path.join(REPO, "tests", "test_distributed.py"))
    assert "< 1e-6" in dist and "within 1e-6 of one process on the combined batches" in text


def test_readme_quick_start_commands_are_the_ci_commands():
    """The README's test command is the one CI runs (.ci/run), and its first command classifies with the package."""
    quick = _section(README, "## Quick start")
    commands = [line for line in quick.splitlines() if line.startswith("python3 -m venv .venv && ")]
    assert len(commands) == 2
    assert commands[0].endswith("&& .venv/bin/capszoo classify capsnet-mnist examples/digits/* --top 3")
    assert commands[1].endswith("&& .venv/bin/python -m pytest -q")
    ci = os.path.join(REPO, ".ci", "run")
    if os.path.isfile(ci):
        assert ".venv/bin/python -m pytest -q" in _read(ci)


def _links(path):
    """``(file, anchor)`` of the relative links of the markdown file ``path`` (file "" for a link within it)."""
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            file, _, anchor = target.partition("#")
            yield file, anchor


def _anchors(path):
    """GitHub's anchors of the headings of the markdown file ``path``."""
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", ["README.md"] + sorted(f"docs/{f}" for f in os.listdir(DOCS) if f.endswith(".md")))
def test_links_resolve(doc):
    path = os.path.join(REPO, doc)
    missing = []
    for file, anchor in _links(path):
        target = os.path.join(os.path.dirname(path), file) if file else path
        if not os.path.exists(target):
            missing.append(file)
        elif anchor and anchor not in _anchors(target):
            missing.append(f"{file}#{anchor}")
    assert not missing, missing


def test_readme_pictures_are_the_figures():
    """The README shows every picture of docs/figures, before the sections that link to docs/ (at most about
    150 lines from the top)."""
    text = _read(README)
    shown = re.findall(r"!\[[^]]*\]\(docs/figures/([^)]+)\)", text)
    assert sorted(shown) == sorted(f for f in os.listdir(os.path.join(DOCS, "figures")) if f.endswith(".png"))
    last = max(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("![") and "docs/figures/" in line)
    assert last <= 150, last


def test_speed_tables_are_the_newest_bench_run_of_the_shipped_weights():
    """The README's speed summary and docs/speed.md's tables (generated blocks, compared with their renders by
    test_readme_zoo_tables_are_the_cards) state the newest full bench run, made with the shipped weights;
    here the renders are checked against that file's numbers."""
    zt = _script("zoo_tables")
    res = zt.bench_file()
    assert res is not None and res["mode"] == "full"
    assert res["weights"]["sha256"] == capszoo.get_card("capsnet-mnist").weights.sha256, \
        "the newest bench run is of other weights: run python -m bench for the shipped ones"
    table, summary = zt.render("speed-table"), zt.render("speed")
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ")}
    for key in zt.SPEED_LABELS:
        want = [f"{res['inference'][key][b]['images_per_second']:.1f}" for b in ("1", "32", "128")]
        assert rows[zt.speed_label(res, key)] == want, key
        if key != "onnxruntime":
            assert f"| {zt.speed_label(res, key)} | {' | '.join(want)} |" in summary, key
    inf = res["inference"]
    assert rows["**capszoo fp32 / onnxruntime**"] == [
        f"{inf['capszoo-float32'][b]['images_per_second'] / inf['onnxruntime'][b]['images_per_second']:.2f}x"
        for b in ("1", "32", "128")]
    assert set(res["setup"]["capszoo-float32"]["engines"].values()) == {"onnxruntime"}   # backend "auto" today
    fp32 = res["accuracy"]["capszoo-float32"]
    card = capszoo.get_card("capsnet-mnist").metrics
    assert fp32["images"] == 10_000 and abs(round(10_000 * (1 - fp32["accuracy"])) - card["test_errors"]) <= 2
    assert f"fp32 {100 * fp32['accuracy']:.2f} % ({round(10_000 * (1 - fp32['accuracy']))} errors)" in table
    assert f"`capszoo classify` starts in {res['cold_start']['capszoo classify']['seconds']:.2f} s." in summary
    mine, torch = res["training"]["capszoo-float32"], res["training"]["torch"]
    assert f"capszoo {mine['images_per_second']:.1f} images/s, " \
           f"{mine['images_per_second'] / torch['images_per_second']:.2f}x PyTorch as installed" in summary


def test_readme_engine_claim_is_the_speed_files():
    """"Every entry's whole net runs on onnxruntime ..., faster than MXNet at every batch size": the bench
    run (capsnet-mnist at batch 1, 32 and 128) and the zoo speed file (every entry at batch 128) say so."""
    zt = _script("zoo_tables")
    assert "faster than MXNet at every batch size" in " ".join(_read(README).split())
    inf = zt.bench_file()["inference"]
    for b in ("1", "32", "128"):
        assert inf["capszoo-float32"][b]["images_per_second"] > inf["capszoo-float32-mxnet"][b]["images_per_second"]
    entries = zt.speed_file()["entries"]
    assert set(entries) == set(capszoo.list_models())
    for name, e in entries.items():
        assert e["onnxruntime"]["images_per_second"] > e["mxnet"]["images_per_second"], name


def test_speed_standing_words():
    zt = _script("zoo_tables")
    res = {"inference": {"a": {b: {"images_per_second": v} for b, v in zip(("1", "32", "128"), (130, 104, 99))},
                         "b": {b: {"images_per_second": 100} for b in ("1", "32", "128")}}}
    assert zt.standing(res, "a", "b") == "ahead at batch 1 (1.30x) and level at batch 32 and 128 (1.04x, 0.99x)"
    assert zt.standing(res, "b", "a") == "behind at batch 1 (0.77x) and level at batch 32 and 128 (0.96x, 1.01x)"


def test_int8_onnx_sentence_is_the_file():
    zt = _script("zoo_tables")
    res = zt.newest_result("onnx-int8")
    text = zt.render("onnx-int8")
    acc, speed = res["accuracy"], res["images_per_second"]
    assert res["test_images"] == 10_000 and res["model"] == "capsnet-mnist"
    assert f"{100 * acc['int8']:.2f} % against float32's {100 * acc['float32']:.2f} %" in text
    assert f"{speed['128']['int8'] / speed['128']['float32']:.2f}x" in text
    assert acc["float32"] == capszoo.get_card("capsnet-mnist").metrics["test_accuracy"]


def _harden_summary():
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harden_summary
    return harden_summary


def test_docs_hardening_table_is_the_json():
    """docs/reliability.md's hardening block is tests/hardening.json, rendered (and the table is there only)."""
    import json
    hs = _harden_summary()
    with open(hs.JSON_PATH, encoding="utf-8") as fh:
        stored = json.load(fh)
    assert hs.DOC == _doc("reliability.md")
    block = hs.readme_block(_read(hs.DOC))
    assert block is not None, "docs/reliability.md has no capszoo:hardening block"
    assert hs.readme_block(_read(README)) is None
    assert block == hs.render(stored), "stale: run python tests/harden_summary.py --write"
    assert stored["inputs"] == sum(r["inputs"] for r in stored["rows"]) > 500
    assert [r["group"] for r in stored["rows"]] == [g for g in hs.GROUPS if g in {r["group"] for r in stored["rows"]}]


def test_hardening_summary_counts_inputs_and_surfaces_apart():
    hs = _harden_summary()
    s = hs.summarize([("graphs", "convert", "x"), ("graphs", "verify", "x"), ("graphs", "convert", "y"),
                      ("graphs", "convert", "x"), ("Hub downloads", "resolve_weights", "x")])
    assert s["rows"][0] == {"group": "graphs", "what": hs.GROUPS["graphs"], "inputs": 2,
                            "surfaces": {"convert": 2, "verify": 1}, "runs": 3}
    assert (s["rows"][1]["group"], s["inputs"], s["runs"]) == ("Hub downloads", 3, 4)
    with pytest.raises(ValueError, match="unknown hardening groups"):
        hs.summarize([("nowhere", "a", "b")])


@pytest.mark.slow
def test_hardening_json_is_the_collected_tests():
    """tests/hardening.json is what the test modules declare (read from pytest's collection)."""
    import json
    import subprocess
    import sys
    hs = _harden_summary()
    proc = subprocess.run([sys.executable, hs.__file__, "--json"], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(hs.JSON_PATH, encoding="utf-8") as fh:
        assert json.loads(proc.stdout) == json.load(fh), "stale: run python tests/harden_summary.py --write"


def _runs_of(card):
    """``(training record, validation accuracy)`` of each run behind a card's weights."""
    runs = [(card.training, card.metrics["val_accuracy"])]
    if "init" in card.training:
        runs.append((card.training["init"], card.training["init"]["val_accuracy"]))
    return runs


@pytest.mark.parametrize("name", [n for n in capszoo.list_models() if capszoo.get_card(n).weights is not None])
def test_training_table_figures_are_the_logs(name):
    """docs/training.md's rows (the cards' training records) agree with the per-epoch logs in recipes/:
    epochs, wall time, mean training speed, and the selected epoch is the best on validation."""
    zt = _script("zoo_tables")
    for t, val in _runs_of(capszoo.get_card(name)):
        log = zt.read_log(t["recipe"])
        assert t["epochs_run"] == len(log) > 0, t["recipe"]
        assert t["wall_time_hours"] == round(sum(m["epoch_seconds"] for m in log) / 3600, 2)
        assert t["train_images_per_second"] == round(sum(m["images_per_second"] for m in log) / len(log), 1)
        best = max(m["val_accuracy"] for m in log)
        assert val == best == log[t["best_epoch"] - 1]["val_accuracy"], t["recipe"]
        assert all(m["val_accuracy"] < best for m in log[:t["best_epoch"] - 1])   # the first epoch that reached it
    assert f"| `{name}` | `{capszoo.get_card(name).training['recipe']}` |" in _read(zt.TRAINING_DOC)
