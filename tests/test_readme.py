"""The README's figures are those of what they describe.

The sub-net table and the `capszoo info` line are the net's; the speed section's figures are
those of the bench results file it names.  (The shipped-weights table is generated, and
checked in test_pretrained.py.)
"""
import os
import re

import capszoo
from capszoo._info import format_info, net_info

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _section(title):
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    start = text.index(f"\n## {title}\n")
    stop = text.find("\n## ", start + 1)
    return text[start:stop if stop != -1 else len(text)]


def test_readme_subnet_table_is_the_nets():
    section = _section("The net")
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = []
    for row in rows:
        name, _what, shape, params = (c.strip() for c in row.strip("|").split(" | "))
        table.append((name.strip("`"), tuple(int(d) for d in re.findall(r"\d+", shape)),
                      int(params.replace(",", ""))))
    info = net_info(capszoo.CapsNet())
    assert table == [(n, tuple(s), p) for n, s, p in info.subnets]
    assert f"Total: **{info.num_params:,} parameters**, {info.num_params * 4 / 1e6:.0f} MB of fp32 weights" in section
    routing = capszoo.get_card("capsnet-mnist").builder().routing_iterations
    assert f"routing by agreement, {routing} iterations" in section


def test_readme_info_snippet_is_the_commands_first_line():
    card = capszoo.get_card("capsnet-mnist")
    section = _section("The net")
    snippet = section[section.index("$ capszoo info capsnet-mnist\n"):].splitlines()[1]
    path = None
    if card.weights is not None:
        from capszoo._hub import bundled_dir

        path = str(bundled_dir() / card.weights.filename)
    assert snippet == format_info(net_info(capszoo.CapsNet(), weights_path=path)).splitlines()[0]


#: The README speed table's rows, by the bench's contender key.
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


def test_readme_speed_figures_are_the_bench_results():
    """Every figure of the README's speed table is the results file it names (no hand-copied drift)."""
    import json

    section = _section("Speed")
    name = re.search(r"\(`(bench/results/[0-9T-]+\.json)`\) on the project machine", section).group(1)
    with open(os.path.join(os.path.dirname(README), name), encoding="utf-8") as fh:
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
