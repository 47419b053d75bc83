"""Run capszoo's ONNX exports in other ONNX runtimes and compare them with onnxruntime.

An export is portable when every runtime that loads it computes the same outputs as
onnxruntime, at batch 1 and at a larger batch in the same loaded model (a runtime that
fixes shapes at the first input it sees fails at the second).  The runtimes, each used
only when its Python package is installed:

``onnxruntime``
    The reference (``pip install onnxruntime``).
``onnx-reference``
    ``onnx.reference.ReferenceEvaluator``: the ONNX specification in numpy (no extra
    package; slow on transposed convolutions).
``openvino``
    Intel's OpenVINO on CPU in float32 (``pip install openvino``); its CPU plugin would
    otherwise run in bfloat16 on CPUs that have it.
``opencv``
    OpenCV's DNN module (``pip install opencv-python-headless``).
``tract``
    Sonos' tract (``pip install tract``).

:func:`load_runtime` returns a callable ``run(x) -> [outputs]`` in the graph's output
order; a runtime that refuses a graph (at load or at run time) raises
:class:`~capszoo.errors.ExportError` naming the runtime, the operator and the node.
:func:`compare_runtimes` gives one row per runtime with the largest differences.
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from capszoo.errors import ExportError

__all__ = ["RUNTIMES", "available_runtimes", "runtime_version", "load_runtime", "compare_runtimes"]

#: The runtimes capszoo knows how to drive, in report order.
RUNTIMES = ("onnxruntime", "onnx-reference", "openvino", "opencv", "tract")

_PACKAGES = {"onnxruntime": "onnxruntime", "onnx-reference": "onnx", "openvino": "openvino",
             "opencv": "opencv-python-headless", "tract": "tract"}


def runtime_version(name):
    """The installed version of runtime ``name``, or None when its package is missing or broken."""
    try:
        if name == "onnxruntime":
            import onnxruntime as m
            return m.__version__
        if name == "onnx-reference":
            import onnx.reference  # noqa: F401
            import onnx as m
            return m.__version__
        if name == "openvino":
            import openvino as m
            return m.__version__.split("-")[0]
        if name == "opencv":
            import cv2 as m
            return m.__version__
        if name == "tract":
            import tract as m
            return m.version()
    except Exception:  # noqa: BLE001  (an import that fails in any way means "not available")
        return None
    raise ExportError(f"unknown ONNX runtime {name!r}; runtimes: {', '.join(RUNTIMES)}")


def available_runtimes():
    """``{name: version}`` of the runtimes that can be imported here."""
    return {n: v for n in RUNTIMES if (v := runtime_version(n)) is not None}


# ---------------------------------------------------------------------------------------------
# One runtime


def _open_onnxruntime(path, model, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _open_reference(path, model, threads):
    from onnx.reference import ReferenceEvaluator
    ev = ReferenceEvaluator(model)
    name = model.graph.input[0].name
    return lambda x: ev.run(None, {name: x})


def _open_openvino(path, model, threads):
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads})
    ports = [compiled.output(i) for i in range(len(model.graph.output))]

    def run(x):
        res = compiled(x)
        return [np.asarray(res[p]) for p in ports]
    return run


def _open_opencv(path, model, threads):
    import cv2
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(path)
    names = [o.name for o in model.graph.output]

    def run(x):
        net.setInput(x)
        return list(net.forward(names))
    return run


def _open_tract(path, model, threads):
    import tract
    runnable = tract.onnx().load(path).into_model().into_runnable()
    return lambda x: [t.to_numpy() for t in runnable.run([x])]


_OPENERS = {"onnxruntime": _open_onnxruntime, "onnx-reference": _open_reference, "openvino": _open_openvino,
            "opencv": _open_opencv, "tract": _open_tract}


def _first_line(exc, limit=300):
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = re.sub(r"\s+", " ", text) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _open_and_run(name, path, model, threads, xs):
    """Open ``path`` in runtime ``name`` and run it on each batch of ``xs`` in turn."""
    run = _OPENERS[name](path, model, threads)
    for x in xs:
        run(x)
    return run


def _prefix_model(model, k, infos):
    """``model`` cut after its first ``k`` nodes, every tensor they compute from the input an
    output (constant parts are left out: some runtimes refuse a graph with a constant output);
    None when the prefix computes nothing from the input."""
    from onnx import helper
    nodes = list(model.graph.node[:k])
    live = {i.name for i in model.graph.input}
    outs = []
    for nd in nodes:
        if any(i in live for i in nd.input):
            live.update(nd.output)
            outs.extend(o for o in nd.output if o in infos)
    if not outs:
        return None
    g = helper.make_graph(nodes, model.graph.name, list(model.graph.input),
                          [infos[o] for o in outs],
                          initializer=list(model.graph.initializer))
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _locate(name, model, threads, xs, workdir):
    """The node that ends the shortest prefix of the graph the runtime refuses when run on the
    batches ``xs`` in turn (binary search), or None when even the whole graph runs."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model)   # outputs with types and shapes (OpenCV needs both)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             if v.type.tensor_type.HasField("shape")}

    def fails(k):
        sub = _prefix_model(model, k, infos)
        if sub is None:
            return False
        p = os.path.join(workdir, f"prefix-{k}.onnx")
        onnx.save(sub, p)
        try:
            _open_and_run(name, p, sub, threads, xs)
        except Exception:  # noqa: BLE001  (any refusal counts)
            return True
        return False

    lo, hi = 0, len(model.graph.node)
    if not fails(hi):
        return None
    while hi - lo > 1:            # invariant: prefix lo runs, prefix hi fails
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(mid) else (mid, hi)
    return model.graph.node[hi - 1]


def _refused(name, path, model, threads, xs, exc):
    """The ExportError for runtime ``name`` refusing ``path``, with the operator and the node."""
    version = runtime_version(name)
    node = None
    with tempfile.TemporaryDirectory(prefix="capszoo-locate-") as workdir:
        try:
            node = _locate(name, model, threads, xs, workdir)
        except Exception:  # noqa: BLE001  (locating is best effort; the message says so)
            node = None
    where = (f"operator {node.op_type} (node {node.name!r})" if node is not None
             else "an operator it does not name (no prefix of the graph fails on its own)")
    return ExportError(f"{name} {version} cannot run {os.path.basename(path)}: {where}: {_first_line(exc)}; "
                       "run the export in onnxruntime, or in a runtime that supports this operator")


def load_runtime(name, path, *, threads=2, probe=None):
    """Load the ONNX file ``path`` in runtime ``name``: a callable ``run(x) -> list of numpy arrays``.

    ``probe``, an input batch, is run once at load time so that a graph the runtime refuses
    only when it runs (OpenCV checks shapes then) is refused here, with the operator and the
    node.  Errors of later calls are reported the same way.

    Raises
    ------
    ExportError
        Unknown runtime, runtime not installed (the message names the package), or a graph
        it refuses (the message names the runtime, the operator and the node).
    """
    import onnx
    if name not in _OPENERS:
        raise ExportError(f"unknown ONNX runtime {name!r}; runtimes: {', '.join(RUNTIMES)}")
    if runtime_version(name) is None:
        raise ExportError(f"the ONNX runtime {name} is not installed; pip install {_PACKAGES[name]}")
    path = os.fspath(path)
    model = onnx.load(path)
    seen = [] if probe is None else [np.ascontiguousarray(probe, dtype=np.float32)]
    try:
        run = _open_and_run(name, path, model, threads, seen)
    except Exception as exc:  # noqa: BLE001  (each runtime raises its own classes)
        raise _refused(name, path, model, threads, seen, exc) from None

    def checked(x):
        # the batches run so far are replayed when locating a refusal: some runtimes fail only
        # on a batch whose shape differs from the first one's
        seen.append(x)
        try:
            return [np.asarray(o) for o in run(x)]
        except Exception as exc:  # noqa: BLE001
            raise _refused(name, path, model, threads, list(seen), exc) from None
    return checked


def _max_diff(got, ref):
    if len(got) != len(ref):
        return float("inf")
    diffs = [float(np.max(np.abs(np.asarray(g, np.float64).reshape(np.shape(r)) - r)))
             if np.size(g) == np.size(r) else float("inf") for g, r in zip(got, ref)]
    return max(diffs) if diffs else 0.0


def compare_runtimes(path, x, *, runtimes=None, batch=None, threads=2, atol=1e-5, model_label=None):
    """Run ``path`` in each runtime at batch 1 then at batch ``len(x)`` in the same loaded model.

    Returns one dict per runtime: ``runtime``, ``version``, ``model``, ``batch``, ``diff_1`` and
    ``diff_n`` (largest absolute difference from onnxruntime over every output, None when not
    run), ``status`` (``"ok"``, ``"differs"``, ``"refused"`` or ``"not installed"``) and
    ``error`` (the refusal's message).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] < 2:
        raise ExportError("compare_runtimes needs a batch of at least 2 inputs (batch 1, then all of them)")
    ref_run = load_runtime("onnxruntime", path, threads=threads)
    refs = {1: ref_run(x[:1]), len(x): ref_run(x)}
    rows = []
    for name in runtimes or RUNTIMES:
        row = {"runtime": name, "version": runtime_version(name), "model": model_label or os.path.basename(path),
               "batch": int(len(x)), "diff_1": None, "diff_n": None, "status": "not installed", "error": None}
        rows.append(row)
        if row["version"] is None:
            continue
        try:
            run = load_runtime(name, path, threads=threads, probe=x[:1])
            row["diff_1"] = _max_diff(run(x[:1]), refs[1])
            row["diff_n"] = _max_diff(run(x), refs[len(x)])
        except ExportError as exc:
            row["status"], row["error"] = "refused", str(exc)
            continue
        row["status"] = "ok" if max(row["diff_1"], row["diff_n"]) <= atol else "differs"
    return rows
