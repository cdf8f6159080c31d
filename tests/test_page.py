"""select --html and alsel html (SPEC §8): the page is self-contained, and a real headless Chromium shows
every thumbnail and the map (checked on its screenshot, not just on the HTML)."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from alsel.page import COLORS
from alsel.selection import read_selection
from test_embed import TINY, write_captions

# photo colours, far from each other and from the map's colours
PHOTO_COLORS = [(230, 20, 20), (20, 200, 40), (240, 220, 0), (150, 30, 200), (0, 200, 210), (255, 120, 200),
                (90, 60, 10), (255, 160, 0), (120, 255, 120), (60, 60, 140), (200, 160, 120), (0, 100, 0)]


def hex_rgb(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    names = []
    for i, c in enumerate(PHOTO_COLORS):
        name = f"sub/p{i:02d}.png" if i % 4 == 0 else f"p{i:02d}.png"
        os.makedirs(tmp_path / "photos" / "sub", exist_ok=True)
        # a solid photo with a little texture, so the tiny model embeds the photos apart
        a = np.zeros((48, 64, 3), np.uint8) + np.array(c, np.uint8)
        a[::8, ::8] = 255 - a[::8, ::8]
        Image.fromarray(a).save(tmp_path / "photos" / name)
        names.append(name)
    write_captions(tmp_path / "captions.csv", [(f"{n}#0", f"caption of {n}", n) for n in names[:3]])
    return tmp_path, names


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html_path, png_path, tmp_path, size=(1400, 2200)):
    exe = chromium()
    if exe is None:
        if os.environ.get("ALSEL_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           f"--window-size={size[0]},{size[1]}", f"--screenshot={png_path}", f"file://{html_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert os.path.exists(png_path), (p.returncode, p.stderr[-800:])


def pixels_near(img: np.ndarray, rgb, tol=24) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


def test_page_shows_every_thumbnail_and_the_map(photos, run_cli):
    from PIL import Image

    d, names = photos
    assert run_cli("embed", "--images", d / "photos", "--captions", d / "captions.csv", "--model-config", TINY,
                   "--device", "cpu", "--out", d / "paired.h5", "--pool-out", d / "pool.h5")[0] == 0
    code, out, err = run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 6,
                             "--strategy", "coreset", "--out", d / "batch.h5", "--html", d / "batch.html")
    assert code == 0, err
    assert "batch.html" in out
    text = (d / "batch.html").read_text()
    # self-contained: every image embedded, no external resource, no script
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', text)) == 6
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text
    sel = read_selection(str(d / "batch.h5"))
    for rank, i in enumerate(sel.ids, start=1):  # rank order, with the reason in words
        assert f'id="rank{rank}"' in text and f"<code>{i}</code>" in text
    assert text.index(f"<code>{sel.ids[0]}</code>") < text.index(f"<code>{sel.ids[-1]}</code>")
    assert text.count("far from everything captioned") == 6
    assert "none of the 6 came from a fill" in text and "coreset" in text
    # the same page for the existing selection
    code, _, err = run_cli("html", "--selection", d / "batch.h5", "--unpaired", d / "pool.h5", "--paired",
                           d / "paired.h5", "--out", d / "again.html")
    assert code == 0, err
    assert (d / "again.html").read_text() == text
    # what a browser shows: every selected photo's colour and the map's three colours are on the screen
    screenshot(d / "batch.html", d / "shot.png", d)
    img = np.asarray(Image.open(d / "shot.png").convert("RGB"))
    colour = {n: c for n, c in zip(names, PHOTO_COLORS)}
    for i in sel.ids:
        assert pixels_near(img, colour[i]) > 400, f"thumbnail of {i} not on the screen"
    for n in set(names) - set(sel.ids):  # photos not in the batch are not shown
        assert pixels_near(img, colour[n]) < 50, n
    for kind in ("batch", "paired", "pool"):
        assert pixels_near(img, hex_rgb(COLORS[kind]), tol=30) > 10, f"map: no {kind} points on the screen"


def test_page_for_texts_and_hn_fill(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=5, dim=16, seed=0)
    code, _, err = run_cli("select", "--strategy", "hn", "--paired", w["paired"], "--unpaired", w["pool_images"],
                           "--budget", 120, "--out", tmp_path / "s.h5", "--html", tmp_path / "s.html", "--device", "cpu")
    assert code == 0, err
    text = (tmp_path / "s.html").read_text()
    sel = read_selection(str(tmp_path / "s.h5"))
    fill = int(sel.attrs["fill_count"])
    assert fill > 0 and f"{fill} of 120" in text
    assert text.count("hard negative: above the threshold") == 120 - fill
    assert text.count("fill (random): not a hard negative") == fill
    assert text.count("no image file") == 120  # a pool not embedded from a folder: no files to show
    code, _, err = run_cli("select", "--strategy", "random", "--select", "texts", "--unpaired", w["pool_texts"],
                           "--budget", 5, "--out", tmp_path / "t.h5", "--html", tmp_path / "t.html")
    assert code == 0, err
    assert (tmp_path / "t.html").read_text().count("drawn uniformly at random") == 5
    # --html needs the pool; a bad path writes nothing
    code, _, err = run_cli("select", "--scores", tmp_path / "none.h5", "--budget", 3, "--out", tmp_path / "x.h5",
                           "--html", tmp_path / "x.html")
    assert code == 2 and "--unpaired" in err and not (tmp_path / "x.html").exists()
