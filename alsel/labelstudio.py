"""The Label Studio side of a round, over its REST API (no SDK: urllib only).

`push`: a selection of photos becomes tasks of a captioning project: the project is created (with
LABEL_CONFIG) or reused by title, a local-files storage for the photo folder is attached (never synced:
syncing makes a second, untagged task per photo), every task's image URL is fetched once to check that
Label Studio serves the photo, and only then are the tasks imported (photos already in the project are
not imported twice). `pull`: the project's JSON export, the file `alsel merge --captions` reads.

Label Studio serves local files only when started with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder above the photos; the task URLs are the photos'
paths under that folder (alsel.annotation.local_files_url).

Tokens: a legacy API token (sent as `Token ...`) or a personal access token (a JWT refresh token,
exchanged at /api/token/refresh for an access token sent as `Bearer ...`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .annotation import DOCUMENT_ROOT_ENV, document_root, image_path, labelstudio_tasks
from .errors import AlselError

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image" placeholder="Describe the photo" rows="3"/>
</View>"""
DEFAULT_PROJECT = "alsel captions"
PAGE = 100


class LabelStudio:
    """A Label Studio server at `url` with an API token; every failure is a one-line AlselError."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0):
        if not url:
            raise AlselError("--url: give the Label Studio address (or set LABEL_STUDIO_URL)")
        if not token:
            raise AlselError("--token: give a Label Studio API token (Account & Settings; or set "
                             "LABEL_STUDIO_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth = self._authorization(token.strip())

    def _authorization(self, token: str) -> str:
        if token.count(".") == 2:  # a personal access token: a JWT to refresh into an access token
            access = self.request("POST", "/api/token/refresh", {"refresh": token}, auth=False).get("access")
            if not access:
                raise AlselError(f"{self.url}: the personal access token was not accepted")
            return f"Bearer {access}"
        return f"Token {token}"

    def request(self, method: str, path: str, body=None, auth: bool = True, raw: bool = False):
        """JSON (or bytes with `raw`) of one API call."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise AlselError(f"{self.url}{path.split('?')[0]}: Label Studio answered HTTP {e.code}: "
                             f"{_detail(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AlselError(f"{self.url}: cannot reach Label Studio ({reason}); is it running at this address?") \
                from None
        if raw:
            return payload
        try:
            return json.loads(payload) if payload else {}
        except json.JSONDecodeError:
            raise AlselError(f"{self.url}{path.split('?')[0]}: not a Label Studio API answer (no JSON)") from None

    def fetch(self, url_path: str) -> tuple[int, bytes]:
        """(HTTP status, body) of a server path such as /data/local-files/?d=..., with the token."""
        req = urllib.request.Request(self.url + url_path, headers={"Authorization": self.auth})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except (urllib.error.URLError, OSError) as e:
            raise AlselError(f"{self.url}: cannot reach Label Studio ({getattr(e, 'reason', e)})") from None

    def _pages(self, path: str, key: str | None = "results") -> list:
        out, page = [], 1
        sep = "&" if "?" in path else "?"
        while True:
            doc = self.request("GET", f"{path}{sep}page={page}&page_size={PAGE}")
            items = doc if key is None else doc.get(key, [])
            if isinstance(doc, list):
                return doc
            out.extend(items)
            total = doc.get("count", doc.get("total"))
            if not items or total is None or len(out) >= total:
                return out
            page += 1

    def project(self, name: str, create: bool = False) -> dict:
        """The project with this title (or id); created with LABEL_CONFIG when `create` and there is none."""
        if name.isdigit():
            return self.request("GET", f"/api/projects/{name}")
        found = [p for p in self._pages("/api/projects") if p.get("title") == name]
        if len(found) > 1:
            raise AlselError(f"{self.url}: {len(found)} projects are titled {name!r} (ids "
                             f"{', '.join(str(p['id']) for p in found)}); give --project ID")
        if found:
            return found[0]
        if not create:
            raise AlselError(f"{self.url}: no project titled {name!r}")
        return self.request("POST", "/api/projects", {"title": name, "label_config": LABEL_CONFIG})

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project (all pages)."""
        return self._pages(f"/api/tasks?project={project}", key="tasks")

    def storages(self, project: int) -> list[dict]:
        """The project's local-files storages."""
        doc = self.request("GET", f"/api/storages/localfiles?project={project}")
        return doc if isinstance(doc, list) else doc.get("results", [])

    def export(self, project: int) -> bytes:
        """The project's JSON export with every task (annotated or not)."""
        return self.request("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true",
                            raw=True)


def _detail(body: bytes) -> str:
    """Label Studio's error in one line (its validation messages when it gives them)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return " ".join(body.decode("utf-8", "replace").split())[:200] or "no detail"
    errors = doc.get("validation_errors") if isinstance(doc, dict) else None
    if isinstance(errors, dict) and errors:
        parts = []
        for v in errors.values():
            parts.extend(v if isinstance(v, list) else [v])
        return " ".join(" ".join(str(p).split()) for p in parts)[:300]
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return " ".join(str(detail or doc).split())[:300]


def _check_config(project: dict, url: str) -> None:
    config = project.get("label_config") or ""
    if 'value="$image"' not in config or "<TextArea" not in config:
        raise AlselError(f"{url}: project {project.get('id')} ({project.get('title')!r}) is not an image-captioning "
                         f"project (its labeling config needs <Image value=\"$image\"> and a <TextArea>); give "
                         f"another --project")


@dataclass
class PushResult:
    project: int
    title: str
    imported: int
    already: int
    photos_served: int
    storage: str
    storage_created: bool
    url: str


def push(client: LabelStudio, sel, project_name: str = DEFAULT_PROJECT, root: str | None = None) -> PushResult:
    """The selection's photos as tasks of the project (see the module docstring); nothing is imported
    unless Label Studio serves every photo."""
    if str(sel.attrs.get("select", "images")) != "images":
        raise AlselError("labelstudio push: the selection is of texts; Label Studio tasks here show photos")
    image_root = str(sel.attrs.get("image_root", ""))
    if not image_root:
        raise AlselError("labelstudio push: the selection records no image_root (its pool was not embedded from a "
                         "folder by `alsel embed`), so there is no folder to serve; import tasks by hand with "
                         "select --labelstudio --image-url-prefix")
    doc_root = document_root(image_root, root)
    tasks = labelstudio_tasks(sel.ids, sel.score, image_root, None, doc_root)
    project = client.project(project_name, create=True)
    _check_config(project, client.url)
    pid = int(project["id"])
    storage = os.path.abspath(image_root)
    existing = [s for s in client.storages(pid) if os.path.abspath(str(s.get("path", ""))) == storage]
    created = False
    if not existing:
        try:
            client.request("POST", "/api/storages/localfiles",
                           {"project": pid, "path": storage, "use_blob_urls": True, "title": "alsel photos"})
        except AlselError as e:
            raise AlselError(f"{e}; Label Studio must run with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                             f"{DOCUMENT_ROOT_ENV}={doc_root} (a folder above the photos)") from None
        created = True
    for t in tasks:  # every photo must show before anything is imported
        status, body = client.fetch(t["data"]["image"])
        path = image_path(image_root, t["data"]["id"])
        if status != 200 or (os.path.isfile(path) and len(body) != os.path.getsize(path)):
            raise AlselError(f"{client.url}: Label Studio does not serve {path} (GET {t['data']['image']} answered "
                             f"HTTP {status}); start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                             f"{DOCUMENT_ROOT_ENV}={doc_root}; nothing was imported")
    have = {str((t.get("data") or {}).get("id")) for t in client.tasks(pid)}
    new = [t for t in tasks if t["data"]["id"] not in have]
    if new:
        client.request("POST", f"/api/projects/{pid}/import", new)
    return PushResult(pid, str(project.get("title")), len(new), len(tasks) - len(new), len(tasks), storage, created,
                      f"{client.url}/projects/{pid}/data")


def pull(client: LabelStudio, project_name: str) -> tuple[bytes, dict]:
    """The project's JSON export (every task) and counts: tasks, with captions, all-cancelled (skipped)."""
    project = client.project(project_name)
    payload = client.export(int(project["id"]))
    try:
        tasks = json.loads(payload)
    except json.JSONDecodeError:
        raise AlselError(f"{client.url}: the export of project {project['id']} is not JSON") from None
    annotated = skipped = 0
    for t in tasks:
        anns = [a for a in t.get("annotations") or [] if isinstance(a, dict)]
        if any(not a.get("was_cancelled") and a.get("result") for a in anns):
            annotated += 1
        elif anns:
            skipped += 1
    return payload, {"project": int(project["id"]), "title": project.get("title"), "tasks": len(tasks),
                     "annotated": annotated, "cancelled": skipped}
