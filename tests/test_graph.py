"""`capszoo graph`: reading an exported MXNet symbol strictly, and drawing its node graph.

The real CapsNet is exported once (a freshly initialized net: only shapes
matter) and drawn as SVG and PNG; the SVG is checked structurally (one
group ``op-<node>`` per operator box, labels, outputs, parameter dots), the
layout geometrically (no overlaps, inputs above their consumers, wrapped into
columns, one arrow per input), and bad files and paths give one
``Error: ...`` line and no file.
"""
import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from capszoo import _graph
from capszoo.cli import main
from capszoo.errors import ExportError, GraphFormatError, InvalidInputError

SVG = "{http://www.w3.org/2000/svg}"
OUTPUTS = ["probabilities", "capsule", "reconstruction"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The whole CapsNet exported with export_mxnet: {"symbol", "params", "doc" (the parsed JSON)}."""
    import capszoo
    from capszoo.exporters import export_mxnet

    folder = tmp_path_factory.mktemp("export")
    net = capszoo.CapsNet()
    net.initialize()
    files = export_mxnet(net, str(folder), prefix="capsnet")
    with open(files["symbol"], encoding="utf-8") as fh:
        doc = json.load(fh)
    return {"symbol": files["symbol"], "params": files["params"], "doc": doc}


@pytest.fixture(scope="module")
def drawn(export, tmp_path_factory):
    """`capszoo graph` run on the export, once as SVG and once as PNG."""
    out = tmp_path_factory.mktemp("drawn")
    runs = {}
    for ext in ("svg", "png"):
        r = CliRunner().invoke(main, ["graph", export["symbol"], "-o", str(out / f"graph.{ext}")])
        assert r.exit_code == 0, r.output
        runs[ext] = r.output
    return {"dir": out, "svg": out / "graph.svg", "png": out / "graph.png", "output": runs}


def _svg(path):
    return ET.parse(str(path)).getroot()


def _texts(root):
    return [t.text or "" for t in root.iter(SVG + "text")]


def _small_graph(**extra):
    doc = {"nodes": [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "fc_weight", "inputs": []},
        {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "10"}, "inputs": [[0, 0, 0], [1, 0, 0]]},
        {"op": "Activation", "name": "relu", "attrs": {"act_type": "relu"}, "inputs": [[2, 0, 0]]},
        {"op": "_copy", "name": "out", "inputs": [[3, 0, 0]]},
    ], "arg_nodes": [0, 1], "heads": [[4, 0, 0]], "attrs": {"mxnet_version": ["int", 10901]}}
    doc.update(extra)
    return doc


# -- reading ---------------------------------------------------------------------------------------
def test_reads_the_capsnet_symbol_without_calling_mxnet(export, monkeypatch):
    import mxnet as mx

    def boom(*a, **k):
        raise AssertionError("load_symbol_graph must not use MXNet")

    monkeypatch.setattr(mx.sym, "load_json", boom)
    monkeypatch.setattr(mx.sym, "load", boom)
    g = _graph.load_symbol_graph(export["symbol"])
    doc = export["doc"]
    assert len(g.nodes) == len(doc["nodes"]) == 97
    assert len(g.op_nodes) == 85 and len(g.variables) == 12
    assert g.output_names == OUTPUTS
    assert g.unknown_ops == []
    assert g.mxnet_version == 10901
    assert list(g.arg_nodes) == doc["arg_nodes"]
    assert g.source == export["symbol"]
    assert all(src < n.index for n in g.nodes for src, _ in n.inputs)
    assert {n.op for n in g.op_nodes} >= {"Convolution", "batch_dot", "softmax", "FullyConnected", "Reshape"}


def test_text_bytes_and_dict_give_the_same_graph(export):
    g = _graph.load_symbol_graph(export["symbol"])
    text = open(export["symbol"], encoding="utf-8").read()
    for other in (text, text.encode("utf-8"), export["doc"]):
        h = _graph.load_symbol_graph(other)
        assert h.nodes == g.nodes and h.heads == g.heads and h.source is None
    with pytest.raises(InvalidInputError):
        _graph.load_symbol_graph(42)


def test_params_are_counted_with_the_weights_reader(export, tmp_path):
    import mxnet as mx

    g = _graph.load_symbol_graph(export["symbol"])
    assert _graph.params_file_beside(export["symbol"]) == export["params"]
    shapes, path, err = _graph._read_params(g, "auto")
    loaded = mx.nd.load(export["params"])
    assert path == export["params"] and err is None
    assert shapes == {k.split(":", 1)[1]: tuple(v.shape) for k, v in loaded.items()}
    declared = {n.name: tuple(int(d) for d in re.findall(r"\d+", n.attrs["__shape__"]))
                for n in g.variables if "__shape__" in n.attrs}
    assert declared == shapes and len(shapes) == 11
    assert _graph._read_params(g, None) is None
    cut = open(export["params"], "rb").read()[:5000]
    for content, reason in ((b"not params", "10 bytes is too short"),
                            (cut, "array 0 declares shape (256, 1, 9, 9), larger than the file")):
        bad = tmp_path / "x.params"
        bad.write_bytes(content)
        assert _graph._read_params(g, bad) == (None, str(bad), reason)


# -- the CapsNet drawing ---------------------------------------------------------------------------
def _ids(root, kind):
    return [g.get("id") for g in root.iter(SVG + "g") if (g.get("id") or "").startswith(kind + "-")]


def test_svg_has_one_box_per_operator_and_labelled_outputs(drawn, export):
    root = _svg(drawn["svg"])
    g = _graph.load_symbol_graph(export["symbol"])
    lay = _graph.graph_layout(g)
    copies = {i for i, _, _ in export["doc"]["heads"]}
    drawn_ops = [i for i, n in enumerate(export["doc"]["nodes"]) if n["op"] != "null" and i not in copies]
    assert len(drawn_ops) == 82  # 85 operators less the 3 _copy nodes naming the outputs, drawn as output markers
    assert sorted(_ids(root, "op")) == sorted(f"op-{i}" for i in drawn_ops)
    data = [i for i, n in enumerate(export["doc"]["nodes"]) if n["name"] == "data"]
    assert _ids(root, "output") == ["output-0", "output-1", "output-2"] and _ids(root, "input") == [f"input-{data[0]}"]
    assert [b.label for b in lay.boxes if b.kind == "output"] == OUTPUTS
    assert {b.key: b.family for b in lay.boxes if b.kind == "op"} == \
        {i: _graph.op_family(export["doc"]["nodes"][i]["op"]) for i in drawn_ops}
    texts = _texts(root)
    for label in ("Convolution 9x9, 256", "Convolution 9x9/2, 256", "FullyConnected 512", "FullyConnected 1024",
                  "Reshape (0,-1,8)", "softmax axis -1", "batch_dot (A^T B)", "Activation sigmoid",
                  *OUTPUTS, "data", "ReLUConv1_fwd"):
        assert label in texts, label
    # parameters are dots on their boxes, not boxes: 11 arrays on 6 operators
    dots = {g.get("id"): len(list(g.iter(SVG + "use"))) for g in root.iter(SVG + "g")
            if (g.get("id") or "").startswith("params-")}
    assert sum(dots.values()) == 11 and len(dots) == 6
    assert sum(b.params for b in lay.boxes) == 11
    assert lay.title == "Node graph of capsnet-symbol.json" and lay.title in texts
    assert all(line in texts for line in lay.header)
    head = " ".join(lay.header)
    total = sum(int(np.prod(s)) for s in _graph._read_params(g, "auto")[0].values())
    assert "82 operator nodes" in head and f"{total:,} parameters in 11 arrays (capsnet-0000.params)" in head
    assert "Read the 4 columns left to right" in head
    assert sorted(os.listdir(drawn["dir"])) == ["graph.png", "graph.svg"]  # no temporary files left


def test_png_is_a_sane_picture(drawn):
    img = Image.open(drawn["png"])
    img.load()
    assert img.format == "PNG" and img.mode == "RGB"
    w, h = img.size
    m = re.search(r"\((\d+) operator nodes in (\d+) columns, (\d+) x (\d+)\)", drawn["output"]["png"])
    assert m and int(m.group(1)) == 82 and (int(m.group(3)), int(m.group(4))) == (w, h)
    assert 800 <= w <= 4000 and 600 <= h <= 4000 and 0.5 <= w / h <= 2.5
    a = np.asarray(img).reshape(-1, 3).astype(np.int64)
    code = (a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]
    for rgb in (_graph._INPUT_FILL, _graph._OUTPUT_FILL):  # input and outputs highlighted
        assert (code == (rgb[0] << 16 | rgb[1] << 8 | rgb[2])).sum() > 1000
    assert (code == 0xFFFFFF).mean() > 0.5  # mostly white paper


def test_layout_is_layered_wrapped_and_free_of_overlaps(export):
    g = _graph.load_symbol_graph(export["symbol"])
    lay = _graph.graph_layout(g)
    w, h = lay.size
    assert lay.num_ops == 82 and lay.columns > 1 and lay.num_layers == 75
    boxes = {b.key: b for b in lay.boxes}
    rects = [(b.x - b.w / 2, b.y, b.x + b.w / 2, b.y + lay.box_height) for b in lay.boxes]
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            a, b = rects[i], rects[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (lay.boxes[i], lay.boxes[j])
    params = {n.index for n in g.variables if n.name != "data"}
    arrows_into = {}
    for n in g.op_nodes:
        if n.index not in boxes:
            continue
        for src, _ in n.inputs:
            if src in params:
                continue
            s, d = boxes[src], boxes[n.index]
            assert s.layer < d.layer
            assert s.col < d.col or (s.col == d.col and s.y < d.y)   # read top to bottom, columns left to right
            arrows_into[n.index] = arrows_into.get(n.index, 0) + 1
    # every edge ends with an arrow on the top edge of its target, one per input
    ends = {}
    for verts, codes, arrow in lay.edges:
        assert codes[0] == 1 and len(verts) == len(codes)
        if arrow:
            x, y = verts[-1]
            (target,) = [b for b in lay.boxes if b.y == y and abs(b.x - x) < b.w / 2]
            ends[target.key] = ends.get(target.key, 0) + 1
    assert {k: v for k, v in ends.items() if not isinstance(k, tuple)} == arrows_into
    assert sorted(k[1] for k in ends if isinstance(k, tuple)) == [0, 1, 2]    # each output marker


def test_drawing_is_deterministic(export, tmp_path):
    for ext in ("svg", "png"):
        a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        _graph.save_graph(export["symbol"], a)
        _graph.save_graph(export["symbol"], b)
        assert a.read_bytes() == b.read_bytes()


def test_symbol_without_params_file_still_draws(export, tmp_path):
    sym = tmp_path / "alone-symbol.json"
    shutil.copy(export["symbol"], sym)
    lay = _graph.save_graph(sym, tmp_path / "g.svg")
    assert lay.num_ops == 82
    texts = _texts(_svg(tmp_path / "g.svg"))
    assert any("11 parameter arrays" in t for t in texts)
    (tmp_path / "alone-0000.params").write_bytes(b"garbage")
    _graph.save_graph(sym, tmp_path / "g2.svg")
    assert any("alone-0000.params could not be read: 7 bytes is too short" in t
               for t in _texts(_svg(tmp_path / "g2.svg")))


def test_without_matplotlib_graph_says_how_to_install_it(monkeypatch, tmp_path):
    src = _valid(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = CliRunner().invoke(main, ["graph", str(src), "-o", str(tmp_path / "g.svg")])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: drawing pictures needs matplotlib, which is not installed; install it with "
        "pip install 'capszoo[viz]'"], r.output
    assert sorted(os.listdir(tmp_path)) == ["ok-symbol.json"]


# -- small graphs ----------------------------------------------------------------------------------
def test_unknown_operator_still_draws(tmp_path):
    doc = _small_graph()
    doc["nodes"][3] = {"op": "MyFancyOp", "name": "fancy", "attrs": {"knob": "3"}, "inputs": [[2, 0, 0]]}
    src = tmp_path / "m-symbol.json"
    src.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["graph", str(src), "-o", str(tmp_path / "g.svg"), "--title", "Mine"])
    assert r.exit_code == 0, r.output
    assert "MyFancyOp" in r.output and "not known" in r.output
    assert _graph.load_symbol_graph(src).unknown_ops == ["MyFancyOp"]
    root = _svg(tmp_path / "g.svg")
    (fancy,) = [g for g in root.iter(SVG + "g") if g.get("id") == "op-3"]
    assert "stroke-dasharray" in fancy.find(SVG + "path").get("style")      # drawn dashed
    texts = _texts(root)
    assert "Mine" in texts and "Node graph of m-symbol.json" not in texts and "MyFancyOp" in texts
    assert any("not known to capszoo" in t and "MyFancyOp" in t for t in texts)
    r = CliRunner().invoke(main, ["graph", str(src), "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "g.png").size[0] >= 600


def test_outputs_of_several_kinds_and_one_column(tmp_path):
    doc = {"nodes": [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "SliceChannel", "name": "split", "attrs": {"num_outputs": "2"}, "inputs": [[0, 0, 0]]},
        {"op": "_zeros", "name": "zeros", "attrs": {"shape": "(1,)"}, "inputs": []},
        {"op": "elemwise_mul", "name": "sq", "inputs": [[1, 1, 0], [1, 1, 0]]},
        {"op": "elemwise_add", "name": "add", "inputs": [[3, 0, 0], [2, 0, 0]]},
    ], "heads": [[1, 0, 0], [1, 1, 0], [4, 0, 0], [0, 0, 0]]}
    g = _graph.load_symbol_graph(doc)
    assert g.output_names == ["split", "split[1]", "add", "data"]
    lay = _graph.graph_layout(g)
    assert lay.columns == 1 and lay.num_ops == 4
    assert sorted(b.label for b in lay.boxes if b.kind == "output") == sorted(g.output_names)
    fig = _graph.graph_figure(g, layout=lay)
    assert sorted(p.get_gid() for p in fig.axes[0].patches if p.get_gid()) == \
        ["input-0", "op-1", "op-2", "op-3", "op-4", "output-0", "output-1", "output-2", "output-3"]
    zeros = next(b for b in lay.boxes if b.key == 2)
    add = next(b for b in lay.boxes if b.key == 4)
    assert zeros.layer == add.layer - 1  # an operator without inputs sits just above its consumer


def test_names_are_escaped(tmp_path):
    doc = _small_graph()
    doc["nodes"][3]["name"] = 'a<b>&"c\'\x01\ud800'
    doc["nodes"][3]["op"] = "Weird<&>"
    doc["nodes"][2]["name"] = "price $5 and $6\nline"   # no math text, no line break
    g = _graph.load_symbol_graph(json.dumps(doc))
    _graph.save_graph(g, tmp_path / "w.svg", title="<T & co>")
    texts = _texts(_svg(tmp_path / "w.svg"))
    assert "<T & co>" in texts and "Weird<&>" in texts and "a<b>&\"c'??" in texts
    assert "price $5 and $6 line" in texts
    _graph.save_graph(g, tmp_path / "w.png")


@pytest.mark.parametrize("op,attrs,label", [
    ("Convolution", {"kernel": "(9, 9)", "stride": "(2, 2)", "num_filter": "256"}, "Convolution 9x9/2, 256"),
    ("Convolution", {"kernel": "(3, 3)", "num_filter": "64", "num_group": "2", "dilate": "(2, 2)"},
     "Convolution 3x3, 64, dilate 2x2, groups 2"),
    ("FullyConnected", {"num_hidden": "512", "flatten": "True"}, "FullyConnected 512"),
    ("Reshape", {"shape": "(0, -1, 8)"}, "Reshape (0,-1,8)"),
    ("Pooling", {"kernel": "(2, 2)", "stride": "(2, 2)", "pool_type": "avg"}, "Pooling avg 2x2/2"),
    ("Activation", {"act_type": "relu"}, "Activation relu"),
    ("slice_axis", {"axis": "2", "begin": "0", "end": "1"}, "slice_axis 2 [0:1]"),
    ("_plus_scalar", {"scalar": "1e-09"}, "_plus_scalar 1e-09"),
    ("sum", {"axis": "(1, 2)"}, "sum axis (1,2)"),
    ("batch_dot", {"transpose_a": "True"}, "batch_dot (A^T B)"),
    ("batch_dot", {}, "batch_dot"),
    ("Whatever", {"x": "1"}, "Whatever"),
])
def test_op_labels(op, attrs, label):
    assert _graph.op_label(_graph.Node(index=1, op=op, name="n", inputs=(), attrs=attrs)) == label


@pytest.mark.parametrize("op,family", [
    ("Convolution", "layer"), ("softmax", "activation"), ("Reshape", "shape"), ("_copy", "shape"),
    ("batch_dot", "math"), ("_plus_scalar", "math"), ("_PlusScalar", "math"), ("broadcast_mul", "math"),
    ("argmax", "select"), ("_contrib_BilinearResize2D", "other"), ("NoSuchOp", "unknown"),
])
def test_op_families(op, family):
    assert _graph.op_family(op) == family


# -- bad input -------------------------------------------------------------------------------------
def _nodes(*specs):
    """Nodes: "v" a variable, or a list of input indices for an Activation."""
    out = []
    for i, s in enumerate(specs):
        if s == "v":
            out.append({"op": "null", "name": f"v{i}", "inputs": []})
        else:
            out.append({"op": "Activation", "name": f"a{i}", "attrs": {"act_type": "relu"},
                        "inputs": [[j, 0, 0] for j in s]})
    return out


_BAD_FILES = {
    "not_json": ("this is not json {", "is not JSON"),
    "json_list": ("[1, 2, 3]", "holds a JSON list"),
    "json_null": ("null", "holds a JSON null"),
    "missing_nodes": (json.dumps({"heads": [[0, 0, 0]]}), "has no 'nodes'"),
    "missing_heads": (json.dumps({"nodes": _nodes("v")}), "has no 'heads'"),
    "nodes_not_list": (json.dumps({"nodes": {"a": 1}, "heads": [[0, 0, 0]]}), "'nodes' must be a list"),
    "empty_nodes": (json.dumps({"nodes": [], "heads": [[0, 0, 0]]}), "'nodes' is empty"),
    "node_without_op": (json.dumps({"nodes": [{"name": "x", "inputs": []}], "heads": [[0, 0]]}), "has no 'op'"),
    "op_not_string": (json.dumps({"nodes": [{"op": 5, "name": "x", "inputs": []}], "heads": [[0, 0]]}),
                      "'op' must be"),
    "inputs_not_list": (json.dumps({"nodes": [{"op": "relu", "name": "x", "inputs": "0"}], "heads": [[0, 0]]}),
                        "'inputs' must be a list"),
    "input_malformed": (json.dumps({"nodes": _nodes("v") + [{"op": "relu", "name": "r", "inputs": [[0]]}],
                                    "heads": [[1, 0]]}), "must be [node, output]"),
    "input_bool": (json.dumps({"nodes": _nodes("v") + [{"op": "relu", "name": "r", "inputs": [[True, 0]]}],
                               "heads": [[1, 0]]}), "must be [node, output]"),
    "input_out_of_range": (json.dumps({"nodes": _nodes("v", [5]), "heads": [[1, 0, 0]]}), "refers to node 5"),
    "input_negative": (json.dumps({"nodes": _nodes("v", [-1]), "heads": [[1, 0, 0]]}), "refers to node -1"),
    "cycle_forward_reference": (json.dumps({"nodes": _nodes("v", [0, 2], [1]), "heads": [[2, 0, 0]]}),
                                "node 2, which comes after it"),
    "cycle_self_reference": (json.dumps({"nodes": _nodes("v", [1]), "heads": [[1, 0, 0]]}), "the node itself"),
    "variable_with_inputs": (json.dumps({"nodes": [{"op": "null", "name": "x", "inputs": [[0, 0]]}],
                                         "heads": [[0, 0]]}), "variable"),
    "heads_out_of_range": (json.dumps({"nodes": _nodes("v", [0]), "heads": [[7, 0, 0]]}),
                           "head 0 refers to node 7"),
    "heads_empty": (json.dumps({"nodes": _nodes("v", [0]), "heads": []}), "'heads' must be a non-empty list"),
    "arg_nodes_operator": (json.dumps({"nodes": _nodes("v", [0]), "arg_nodes": [1], "heads": [[1, 0]]}),
                           "not a variable"),
    "attrs_not_strings": (json.dumps({"nodes": [{"op": "null", "name": "x", "inputs": [], "attrs": {"a": 1}}],
                                      "heads": [[0, 0]]}), "must be a string"),
    "huge_attribute": (json.dumps({"nodes": [{"op": "Reshape", "name": "r", "inputs": [],
                                              "attrs": {"shape": "(" + "1," * 40000 + ")"}}],
                                   "heads": [[0, 0]]}), "more than the 65,536 allowed"),
    "huge_name": (json.dumps({"nodes": [{"op": "null", "name": "n" * 70000, "inputs": []}], "heads": [[0, 0]]}),
                  "more than the 65,536 allowed"),
    "empty_file": ("", "is empty"),
    "blank_file": ("  \n\n ", "is empty"),
    "deeply_nested": ("[" * 100000 + "]" * 100000, "nested too deeply"),
    "binary_file": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FILES))
def test_bad_symbol_files(case, tmp_path):
    content, message = _BAD_FILES[case]
    src = tmp_path / "bad-symbol.json"
    (src.write_bytes if isinstance(content, bytes) else src.write_text)(content)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = CliRunner().invoke(main, ["graph", str(src), "-o", str(out_dir / "graph.svg")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0]
    assert "capszoo export" in lines[0]  # the remedy
    assert os.listdir(out_dir) == []
    with pytest.raises(GraphFormatError):
        _graph.load_symbol_graph(src)


def _valid(tmp_path):
    src = tmp_path / "ok-symbol.json"
    src.write_text(json.dumps(_small_graph()))
    return src


@pytest.mark.parametrize("case,message", [
    ("directory", "is a folder"),
    ("missing_file", "no such file"),
    ("unknown_extension", "unknown extension '.gif'"),
    ("jpeg_extension", "drawn as .svg or .png"),
    ("no_extension", "no file extension"),
    ("output_under_regular_file", "is not a folder"),
    ("output_in_missing_folder", "does not exist"),
    ("output_is_a_folder", "it is a folder"),
])
def test_bad_paths(case, message, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src, out = _valid(tmp_path), out_dir / "graph.png"
    if case == "directory":
        src = tmp_path
    elif case == "missing_file":
        src = tmp_path / "nope-symbol.json"
    elif case == "unknown_extension":
        out = out_dir / "graph.gif"
    elif case == "jpeg_extension":
        out = out_dir / "graph.jpg"
    elif case == "no_extension":
        out = out_dir / "graph"
    elif case == "output_under_regular_file":
        (out_dir / "afile").write_text("x")
        out = out_dir / "afile" / "graph.svg"
    elif case == "output_in_missing_folder":
        out = out_dir / "missing" / "graph.svg"
    elif case == "output_is_a_folder":
        out = out_dir / "graph.svg"
        out.mkdir()
    before = sorted(os.listdir(out_dir))
    r = CliRunner().invoke(main, ["graph", str(src), "-o", str(out)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0]
    assert sorted(os.listdir(out_dir)) == before


def test_library_errors(tmp_path, monkeypatch, export):
    src = _valid(tmp_path)
    with pytest.raises(InvalidInputError):
        _graph.save_graph(src, tmp_path / "g.bmp")
    with pytest.raises(ExportError):
        _graph.save_graph(src, tmp_path / "missing" / "g.svg")
    # size caps
    many = '{"nodes": [' + ",".join(['{"op":"null","name":"v","inputs":[]}'] * 100_001) + '], "heads": [[0, 0]]}'
    with pytest.raises(GraphFormatError, match="100,001 nodes"):
        _graph.load_symbol_graph(many)
    monkeypatch.setattr(_graph, "MAX_FILE_BYTES", 1000)
    big = tmp_path / "big-symbol.json"
    big.write_text(json.dumps(_small_graph(padding="x" * 2000)))
    with pytest.raises(GraphFormatError, match="more than"):
        _graph.load_symbol_graph(big)
    monkeypatch.setattr(_graph, "MAX_DRAWN_NODES", 10)
    with pytest.raises(InvalidInputError, match="legibly"):
        _graph.graph_layout(_graph.load_symbol_graph(export["doc"]))
