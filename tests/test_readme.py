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


#: The speed table's rows (docs/speed.md), by the bench's contender key.
SPEED_ROWS = {
    "capszoo fp32 (`backend=\"auto\"`: onnxruntime up to 8 images)": "capszoo-float32",
    "capszoo fp32, MXNet only (`backend=\"mxnet\"`)": "capszoo-float32-mxnet",
    "capszoo bf16 (`dtype=\"bfloat16\"`)": "capszoo-bfloat16",
    "capszoo int8 (`dtype=\"int8\"`)": "capszoo-int8",
    "PyTorch 2.13 eager fp32, as installed": "torch",
    "PyTorch 2.13 eager fp32, glibc keeping freed memory": "torch-malloc",
    "onnxruntime 1.31 fp32 (capszoo's export)": "onnxruntime",
}
#: Its ratio rows: (numerator, denominator).
RATIO_ROWS = {
    "**capszoo fp32 / PyTorch as installed**": ("capszoo-float32", "torch"),
    "**capszoo fp32 / PyTorch, memory kept**": ("capszoo-float32", "torch-malloc"),
    "**capszoo bf16 / PyTorch as installed**": ("capszoo-bfloat16", "torch"),
    "**capszoo bf16 / PyTorch, memory kept**": ("capszoo-bfloat16", "torch-malloc"),
    "**capszoo int8 / PyTorch as installed**": ("capszoo-int8", "torch"),
    "**capszoo int8 / PyTorch, memory kept**": ("capszoo-int8", "torch-malloc"),
}


def test_docs_speed_figures_are_the_bench_results():
    """Every figure of docs/speed.md's speed table is the results file it names (no hand-copied drift)."""
    import json

    section = _section(_doc("speed.md"), "# Speed")
    name = re.search(r"\(`(bench/results/[0-9T-]+\.json)`\) on the project machine", section).group(1)
    with open(os.path.join(REPO, name), encoding="utf-8") as fh:
        res = json.load(fh)
    inf = res["inference"]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] in {**SPEED_ROWS, **RATIO_ROWS}:
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(SPEED_ROWS) | set(RATIO_ROWS)
    batches = ("1", "32", "128")
    for label, key in SPEED_ROWS.items():
        assert rows[label] == [f"{inf[key][b]['images_per_second']:.1f}" for b in batches], label
    for label, (num, den) in RATIO_ROWS.items():
        want = [f"{inf[num][b]['images_per_second'] / inf[den][b]['images_per_second']:.2f}x" for b in batches]
        assert [c.strip("*") for c in rows[label]] == want, label
    tr = res["training"]
    assert (f"Training at batch 128: capszoo {tr['capszoo-float32']['images_per_second']:.1f} images/s, "
            f"PyTorch as installed {tr['torch']['images_per_second']:.1f} "
            f"(**{tr['capszoo-float32']['images_per_second'] / tr['torch']['images_per_second']:.2f}x**)"
            ) in " ".join(section.split())
    assert (f"`capszoo classify` **{res['cold_start']['capszoo classify']['seconds']:.2f} s**"
            in " ".join(section.split()))
    assert f"Measured fp32 peak: {res['peak']['fp32_peak_gflops']:.0f} GFLOP/s" in section
    bench_weights = re.search(r"the weights shipped then \(`([0-9a-f]{8})`", section).group(1)
    assert res["weights"]["sha256"].startswith(bench_weights)


def precision_sentence(res, path):
    """docs/speed.md's reduced-precision sentence for the bench results ``res`` (read from ``path``)."""
    acc, cpu = res["accuracy"], res["cpu"]
    fp32, int8 = acc["capszoo-float32"], acc["capszoo-int8"]

    def figure(a):
        errors = round(a["images"] * (1 - a["accuracy"]))
        return f"{100 * a['accuracy']:.2f} % ({errors} errors)"
    where = "AVX-512" if cpu["avx512"] else "AVX2 only: no AVX-512, bf16 or VNNI"
    parts = [f"fp32 {figure(fp32)}",
             f"int8 {figure(int8)}, {int8['accuracy_drop_points']:.2f} points lower, "
             f"{100 * int8['argmax_agreement_with_fp32']:.2f} % of decisions agree with fp32"]
    if "capszoo-bfloat16" in acc:
        bf16 = acc["capszoo-bfloat16"]
        parts.append(f"bf16 {figure(bf16)}, {100 * bf16['argmax_agreement_with_fp32']:.2f} % agree")
    else:
        parts.append("bf16 not measured (that CPU has no native bfloat16)")
    return (f"With the weights shipped now (`{res['weights']['sha256'][:8]}`), on all {fp32['images']:,} test "
            f"digits (`{path}`, {where}): " + "; ".join(parts) + ".")


def test_readme_reduced_precision_figures_are_the_shipped_weights():
    """docs/speed.md's int8 (and bf16) accuracy is that of the bench results file it names, measured with the
    shipped weights on the whole test set (a weights change makes this fail until the bench is run again)."""
    import json

    section = " ".join(_section(_doc("speed.md"), "# Speed").split())
    name = re.search(r"`(bench/results/[0-9-]+-accuracy-published\.json)`", section)
    assert name, "docs/speed.md names no bench/results/<date>-accuracy-published.json"
    with open(os.path.join(REPO, name.group(1)), encoding="utf-8") as fh:
        res = json.load(fh)
    assert res["weights"]["sha256"] == capszoo.get_card("capsnet-mnist").weights.sha256, \
        "the results are of other weights: run python -m bench for the shipped ones"
    assert res["accuracy_meaningful"] and res["accuracy"]["capszoo-float32"]["images"] == 10_000
    sentence = precision_sentence(res, name.group(1))
    assert sentence in section, sentence


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
