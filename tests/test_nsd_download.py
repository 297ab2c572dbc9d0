"""lib.nsd.download against a local HTTP stand-in for NSD's S3 bucket (the tests are offline)."""

from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile
from functools import partial

import numpy as np
import pytest

from lib.nsd.__main__ import main
from lib.nsd.download import download_coco_captions, download_subject, fetch, parse_sessions
from lib.nsd.layout import NSDLayout


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HEAD, GET and single-range GET (``bytes=N-``), logging each request."""

    log: list = []  # noqa: RUF012 - replaced per server by the fixture
    honour_range = True

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        type(self).log.append(("GET", self.path, self.headers.get("Range")))
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        type(self).log.append(("HEAD", self.path, None))
        super().do_HEAD()


@pytest.fixture()
def server(tmp_path):
    bucket = tmp_path / "bucket"
    rng = np.random.default_rng(0)
    keys = NSDLayout.keys(1, [1, 2, 3], stimuli=True)
    contents = {}
    for k in keys:
        if k.endswith("betas_session03.nii.gz"):
            continue  # withheld on the server
        data = rng.integers(0, 256, int(rng.integers(1000, 300_000)), dtype=np.uint8).tobytes()
        (bucket / k).parent.mkdir(parents=True, exist_ok=True)
        (bucket / k).write_bytes(data)
        contents[k] = data
    # a COCO-like annotation zip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train2017", "val2017"):
            zf.writestr(f"annotations/captions_{split}.json",
                        json.dumps({"annotations": [{"image_id": 1, "caption": split}]}))
        zf.writestr("annotations/instances_val2017.json", "{}")
    (bucket / "annotations_trainval2017.zip").write_bytes(buf.getvalue())

    handler = type("Handler", (_RangeHandler,), {"log": [], "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(bucket))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", contents, handler
    httpd.shutdown()
    httpd.server_close()


def test_parse_sessions():
    assert parse_sessions("1-3,7") == [1, 2, 3, 7]
    assert parse_sessions("5") == [5]
    with pytest.raises(ValueError):
        parse_sessions("3-1")
    with pytest.raises(ValueError):
        parse_sessions("0")


def test_download_subject_fetches_exact_files(server, tmp_path):
    base, contents, _ = server
    dest = tmp_path / "nsd"
    files = download_subject(1, [1, 2], dest, base_url=base, progress=False)
    assert sorted(f.key for f in files) == sorted(NSDLayout.keys(1, [1, 2]))
    for f in files:
        assert f.status == "downloaded"
        assert (dest / f.key).read_bytes() == contents[f.key]
    assert not list(dest.rglob("*.part"))
    # second run: everything complete, nothing is fetched again
    files = download_subject(1, [1, 2], dest, base_url=base, progress=False)
    assert {f.status for f in files} == {"skipped"}


def test_resume_partial_file(server, tmp_path):
    base, contents, handler = server
    key = NSDLayout.keys(1, [1])[-1]
    dest = tmp_path / key
    dest.parent.mkdir(parents=True)
    half = len(contents[key]) // 2
    (dest.parent / (dest.name + ".part")).write_bytes(contents[key][:half])
    assert fetch(f"{base}/{key}", dest, progress=False) == "resumed"
    assert dest.read_bytes() == contents[key]
    gets = [entry for entry in handler.log if entry[0] == "GET"]
    assert gets[-1][2] == f"bytes={half}-"


def test_resume_when_server_ignores_range(server, tmp_path):
    base, contents, handler = server
    handler.honour_range = False
    key = NSDLayout.keys(1, [2])[-1]
    dest = tmp_path / "f.nii.gz"
    (tmp_path / "f.nii.gz.part").write_bytes(contents[key][:100])
    assert fetch(f"{base}/{key}", dest, progress=False) == "downloaded"
    assert dest.read_bytes() == contents[key]


def test_wrong_size_file_is_refetched(server, tmp_path):
    base, contents, _ = server
    key = NSDLayout.keys(1, [1])[0]
    dest = tmp_path / "x.mat"
    dest.write_bytes(b"short")
    assert fetch(f"{base}/{key}", dest, progress=False) == "downloaded"
    assert dest.read_bytes() == contents[key]


def test_cli_dry_run_lists_sizes_and_missing_session(server, tmp_path, capsys):
    base, contents, handler = server
    dest = tmp_path / "nsd"
    rc = main(["download", "--subject", "1", "--sessions", "1-3", "--dest", str(dest),
               "--dry-run", "--base-url", base])
    out = capsys.readouterr()
    assert rc == 1  # session 3 is not on the server
    assert "betas_session03.nii.gz" in out.err and "404" in out.err
    for key in contents:
        line = next(line for line in out.out.splitlines() if line.endswith(key))
        assert "planned" in line
    assert not dest.exists()  # nothing written
    assert all(entry[0] == "HEAD" for entry in handler.log)
    assert "would fetch" in out.out and "captions" in out.out  # captions are part of the plan


def test_cli_download_without_stimuli(server, tmp_path, capsys):
    base, _contents, _ = server
    dest = tmp_path / "nsd"
    rc = main(["download", "--subject", "1", "--sessions", "2", "--dest", str(dest),
               "--no-stimuli", "--no-coco", "--base-url", base])
    assert rc == 0
    assert not (dest / "nsddata_stimuli").exists()
    assert (dest / NSDLayout.keys(1, [2])[-1]).exists()
    assert not (dest / "annotations").exists()  # --no-coco: the explicit opt-out


def test_cli_download_fetches_captions_by_default(server, tmp_path, capsys):
    base, _contents, handler = server
    dest = tmp_path / "nsd"
    coco_url = f"{base}/annotations_trainval2017.zip"
    rc = main(["download", "--subject", "1", "--sessions", "2", "--dest", str(dest),
               "--base-url", base, "--coco-url", coco_url])
    assert rc == 0
    for name in ("captions_train2017.json", "captions_val2017.json"):
        assert (dest / "annotations" / name).is_file()
    # the captions are there: a second run (or --coco-only) does not fetch the zip again
    (dest / "annotations" / "annotations_trainval2017.zip").unlink()
    handler.log.clear()
    assert main(["download", "--coco-only", "--dest", str(dest), "--coco-url", coco_url]) == 0
    assert not handler.log


def test_cli_coco_only_needs_no_subject(server, tmp_path, capsys):
    base, _contents, _ = server
    dest = tmp_path / "nsd"
    rc = main(["download", "--coco-only", "--dest", str(dest),
               "--coco-url", f"{base}/annotations_trainval2017.zip"])
    assert rc == 0
    assert (dest / "annotations" / "captions_val2017.json").is_file()
    assert not (dest / "nsddata").exists()
    with pytest.raises(SystemExit):  # without --coco-only a subject is required
        main(["download", "--dest", str(dest)])
    assert "--subject is required" in capsys.readouterr().err


def test_cli_help_says_what_needs_stimuli_and_captions(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "stage 1" in text and "vision zoo" in text  # --no-stimuli is not harmless
    assert "--no-coco" in text and "--coco-only" in text


def test_coco_captions_from_zip(server, tmp_path):
    base, _, _ = server
    paths = download_coco_captions(tmp_path, url=f"{base}/annotations_trainval2017.zip",
                                   progress=False)
    assert [p.name for p in paths] == ["captions_train2017.json", "captions_val2017.json"]
    assert json.loads(paths[1].read_text())["annotations"][0]["caption"] == "val2017"
    assert not (tmp_path / "annotations" / "instances_val2017.json").exists()
    paths = download_coco_captions(tmp_path, url=f"{base}/annotations_trainval2017.zip",
                                   progress=False, instances=True)
    assert paths[-1] == tmp_path / "annotations" / "instances_val2017.json" and paths[-1].exists()


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rc = main(["download", "--subject", "1", "--sessions", "1", "--dest", str(tmp_path),
               "--dry-run", "--base-url", f"http://127.0.0.1:{port}"])
    assert rc == 2
    assert "Could not reach" in capsys.readouterr().err
