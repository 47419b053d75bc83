"""The benchmark's own file handling (its figures are not tests: see ``python -m bench``)."""
import datetime
import json
import os

import pytest

import bench.__main__ as bench_main


def test_default_out_names_a_run_by_date_and_minute():
    now = datetime.datetime(2026, 11, 22, 1, 5, 59)
    assert os.path.basename(bench_main.default_out(False, now)) == "2026-11-22T0105.json"
    assert os.path.basename(bench_main.default_out(True, now)) == "2026-11-22T0105-quick.json"
    assert os.path.dirname(bench_main.default_out(False, now)) == os.path.join(bench_main.HERE, "results")


def test_write_json_atomic_writes_an_ordinary_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    bench_main.write_json_atomic(path, {"a": 1.5})
    assert json.loads(path.read_text()) == {"a": 1.5}
    assert os.listdir(tmp_path / "sub") == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_write_json_atomic_keeps_the_old_file_when_serialising_fails(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        bench_main.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize("keep", [False, True])
def test_main_removes_its_work_folder_unless_asked_to_keep_it(monkeypatch, tmp_path, capsys, keep):
    seen = {}

    def fake_run(args, cfg, threads, out_path, workdir, t_start):
        seen["workdir"] = workdir
        with open(os.path.join(workdir, "capsnet-mnist.onnx"), "wb") as fh:
            fh.write(b"x" * 1000)
        raise RuntimeError("a worker died")

    monkeypatch.setattr(bench_main, "run", fake_run)
    monkeypatch.setattr(bench_main.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="a worker died"):
        bench_main.main(["--quick", "--out", str(tmp_path / "r.json")] + (["--keep-workdir"] if keep else []))
    assert os.path.dirname(seen["workdir"]) == str(tmp_path)
    assert os.path.isdir(seen["workdir"]) is keep
    assert ("kept the work folder " + seen["workdir"] in capsys.readouterr().out) is keep
    assert not (tmp_path / "r.json").exists()
