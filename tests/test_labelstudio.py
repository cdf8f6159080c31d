"""The annotation loop against a real Label Studio (tests/labelstudio_server.py), as the README gives it:
select → `alsel labelstudio push` → caption (here over the REST API, as the browser would: two annotators
on one task, a cancelled draft beside a caption, a skipped photo, a photo nobody captioned) → `alsel
labelstudio pull` → `alsel merge --captions` → the next round in the same project. Also: every task's
photo is served byte for byte, synced duplicates, JSON_MIN and CSV exports, a personal access token."""

import json
import os
import time
import urllib.request

import numpy as np
import pytest

from alsel.labelstudio import LABEL_CONFIG
from alsel.selection import read_selection
from alsel.store import open_store
from labelstudio_server import Server, install
from test_cli import assert_bad_input
from test_embed import TINY, write_captions

NAMES = ["a01.png", "a02.png", "a03.png", "a04.png", "a05.png", "trip/DSC 067 é.jpg", "trip/b#1.png",
         "trip/c&d.png", "trip/e+f.png", "g10.png", "g11.png", "g12.png", "g13.png", "g14.png", "g15.png",
         "g16.png"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = install()
    root = tmp_path_factory.mktemp("ls")
    s = Server(exe, str(root / "data"), str(root))
    yield s
    s.stop()
    assert s.proc.poll() is not None


class Api:
    def __init__(self, server):
        self.url, self.token = server.url, server.token

    def __call__(self, method, path, body=None, raw=False):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return data if raw else (json.loads(data) if data else None)

    def tasks(self, project):
        return self("GET", f"/api/tasks?project={project}&page_size=1000")["tasks"]

    def caption(self, task, text, user=None, cancelled=False):
        body = {"result": [] if text is None else [{"from_name": "caption", "to_name": "image", "type": "textarea",
                                                    "value": {"text": [text]}}], "was_cancelled": cancelled}
        if user is not None:
            body["completed_by"] = user
        return self("POST", f"/api/tasks/{task}/annotations/", body)


@pytest.fixture(scope="module")
def world(server):
    """Photos under the server's document root (each a distinct colour), captions for four of them."""
    from PIL import Image

    d = server.document_root
    rng = np.random.default_rng(5)
    for n in NAMES:
        p = os.path.join(d, "photos", n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype("uint8")).save(p)
    write_captions(os.path.join(d, "captions.csv"),
                   [(f"{n}#0", f"an old caption of {n}", n) for n in NAMES[:4]])
    return d


def alsel_ok(run_cli, *args):
    code, out, err = run_cli(*args)
    assert code == 0, (args, err)
    return out, err


def test_round_trip(server, world, run_cli, monkeypatch, tmp_path):
    api = Api(server)
    d = world
    monkeypatch.chdir(d)
    monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)  # the default: the folder above
    t0 = time.perf_counter()
    # the README's steps: embed, select (with the page), push
    alsel_ok(run_cli, "embed", "--images", "photos", "--captions", "captions.csv", "--model-config", TINY,
             "--device", "cpu", "--out", "paired.h5", "--pool-out", "pool.h5")
    alsel_ok(run_cli, "select", "--paired", "paired.h5", "--unpaired", "pool.h5", "--budget", 6, "--out", "batch.h5",
             "--html", "batch.html")
    out, _ = alsel_ok(run_cli, "labelstudio", "push", "--selection", "batch.h5")
    assert "pushed 6 tasks" in out and "all 6 photos are served" in out, out
    sel = list(read_selection("batch.h5").ids)
    # the project holds the README's labeling config, one storage (not synced), the six tasks
    (project,) = [p for p in api("GET", "/api/projects")["results"] if p["title"] == "alsel captions"]
    assert project["label_config"] == LABEL_CONFIG
    (storage,) = api("GET", f"/api/storages/localfiles?project={project['id']}")
    assert storage["path"] == os.path.join(d, "photos") and storage["last_sync"] is None
    tasks = api.tasks(project["id"])
    assert [t["data"]["id"] for t in tasks] == sel
    for t in tasks:  # every task's image URL answers with the photo's bytes
        body = api("GET", t["data"]["image"], raw=True)
        with open(os.path.join(d, "photos", t["data"]["id"]), "rb") as fh:
            assert body == fh.read(), t["data"]
    # pushing again imports nothing twice
    out, _ = alsel_ok(run_cli, "labelstudio", "push", "--selection", "batch.h5")
    assert "pushed 0 tasks" in out and "6 were there already" in out
    assert len(api.tasks(project["id"])) == 6
    # annotate as people would in the browser
    bob = api("POST", "/api/users/", {"email": "bob@example.com", "username": "bob"})["id"]
    by_id = {t["data"]["id"]: t["id"] for t in tasks}
    api.caption(by_id[sel[0]], "a photo, first annotator")
    api.caption(by_id[sel[0]], "a photo, second annotator", user=bob)
    api.caption(by_id[sel[1]], None, cancelled=True)  # a cancelled draft beside a real caption
    api.caption(by_id[sel[1]], "a caption after a cancelled draft", user=bob)
    api.caption(by_id[sel[2]], None, cancelled=True)  # skipped: only a cancelled annotation
    for x in sel[4:]:
        api.caption(by_id[x], f"new caption of {x}")
    # sel[3]: nobody captioned it
    # a synced storage adds untagged duplicate tasks: with no caption they are ignored
    api("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    for _ in range(30):
        if len(api.tasks(project["id"])) > 6:
            break
        time.sleep(1)
    assert len(api.tasks(project["id"])) > 6
    out, _ = alsel_ok(run_cli, "labelstudio", "pull", "--out", "export.json")
    assert "4 with captions" in out and "1 skipped" in out
    out, err = alsel_ok(run_cli, "merge", "--paired", "paired.h5", "--unpaired", "pool.h5", "--selection", "batch.h5",
                        "--captions", "export.json", "--out-paired", "paired2.h5", "--out-pool", "pool2.h5",
                        "--device", "cpu")
    assert "+4 images, +5 texts" in out and "2 skipped" in out and "1 cancelled in Label Studio" in out, out
    assert "made by syncing the storage" in err
    with open_store("paired2.h5") as p, open_store("pool2.h5") as u:
        text = dict(zip(p.ids("texts"), p.text_strings()))
        assert text[f"{sel[0]}#0"] == "a photo, first annotator" and text[f"{sel[0]}#1"] == "a photo, second annotator"
        assert text[f"{sel[1]}#0"] == "a caption after a cancelled draft"
        assert all(text[f"{n}#0"] == f"an old caption of {n}" for n in NAMES[:4])
        assert set(u.ids("images")[u.flags("images", "skipped")]) == {sel[2], sel[3]}
    # a caption written on a synced duplicate: merge names that task and says what it is
    dup = next(t for t in api.tasks(project["id"]) if "id" not in t["data"])
    ann = api.caption(dup["id"], "written on the duplicate")
    alsel_ok(run_cli, "labelstudio", "pull", "--out", "export_dup.json")
    assert_bad_input(run_cli("merge", "--paired", "paired.h5", "--unpaired", "pool.h5", "--selection", "batch.h5",
                             "--captions", "export_dup.json", "--out-paired", "x.h5", "--out-pool", "y.h5"),
                     "export_dup.json", f"Label Studio task {dup['id']}", "syncing", out=os.path.join(d, "x.h5"))
    api("DELETE", f"/api/annotations/{ann['id']}/")
    # JSON_MIN and CSV exports name the JSON export
    for kind, name in (("JSON_MIN", "min.json"), ("CSV", "export.csv")):
        with open(name, "wb") as fh:
            fh.write(api("GET", f"/api/projects/{project['id']}/export?exportType={kind}", raw=True))
        assert_bad_input(run_cli("merge", "--paired", "paired.h5", "--unpaired", "pool.h5", "--selection", "batch.h5",
                                 "--captions", name, "--out-paired", "x.h5", "--out-pool", "y.h5"),
                         name, "JSON export", out=os.path.join(d, "x.h5"))
    # round 2 in the same project: the skipped photos are never chosen again; the export holds both rounds
    alsel_ok(run_cli, "select", "--paired", "paired2.h5", "--unpaired", "pool2.h5", "--budget", 4, "--out",
             "batch2.h5")
    sel2 = list(read_selection("batch2.h5").ids)
    assert not set(sel2) & {sel[2], sel[3]} and not set(sel2) & set(sel)
    out, _ = alsel_ok(run_cli, "labelstudio", "push", "--selection", "batch2.h5")
    assert "pushed 4 tasks" in out
    by_id = {t["data"].get("id"): t["id"] for t in api.tasks(project["id"])}
    for x in sel2:
        api.caption(by_id[x], f"round two caption of {x}")
    # a personal access token works as well as the legacy token
    pat = api("POST", "/api/token/")["token"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    alsel_ok(run_cli, "labelstudio", "pull", "--out", "export2.json")
    out, err = alsel_ok(run_cli, "merge", "--paired", "paired2.h5", "--unpaired", "pool2.h5", "--selection",
                        "batch2.h5", "--captions", "export2.json", "--out-paired", "paired3.h5", "--out-pool",
                        "pool3.h5", "--device", "cpu")
    assert "+4 images, +4 texts" in out and "earlier rounds" in err
    with open_store("paired3.h5") as p, open_store("pool3.h5") as u:
        assert p.images.n == 4 + 4 + 4 and len(p.text_strings()) == p.texts.n
        assert set(u.ids("images")[u.flags("images", "skipped")]) == {sel[2], sel[3]}
    print(f"\nLabel Studio {server.url}: started in {server.start_seconds:.0f} s; two rounds in "
          f"{time.perf_counter() - t0:.1f} s")


def test_push_refuses_what_cannot_show(server, world, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    d = world
    if not os.path.exists(os.path.join(d, "batch.h5")):
        pytest.skip("needs test_round_trip's stores")
    # a document root Label Studio does not have: the storage is refused, nothing imported
    assert_bad_input(run_cli("labelstudio", "push", "--selection", os.path.join(d, "batch.h5"), "--project", "other",
                             "--document-root", os.path.join(d, "photos", "..", "..")),
                     "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "nothing was imported")
    assert_bad_input(run_cli("labelstudio", "push", "--selection", os.path.join(d, "batch.h5"), "--token", "wrong"),
                     "HTTP 401")
    assert_bad_input(run_cli("labelstudio", "pull", "--project", "no such project", "--out", tmp_path / "e.json"),
                     "no project titled", out=tmp_path / "e.json")
    assert_bad_input(run_cli("labelstudio", "pull", "--url", "http://127.0.0.1:9", "--out", tmp_path / "e.json"),
                     "cannot reach Label Studio", out=tmp_path / "e.json")
