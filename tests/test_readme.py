"""The README's figures about the net are the net's: its sub-net table and the `capszoo info` snippet.

(The shipped-weights table is generated and checked in test_pretrained.py.)
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
