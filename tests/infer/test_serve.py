"""``btfm-serve``: the explorer's endpoints over loopback HTTP, and the page in headless Chromium.

The inputs are a small structured embedding made here: three vertical bands of the map (left,
middle, right thirds) each drawn around its own mean vector, so that similarity and a
few-shot classifier have something to find; an ROI with a zero corner, and one ROI pixel
without embedding.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from btfm_core.errors import BTFMError, InputDataError
from btfm_infer import convert_npy2tiff, serve
from btfm_infer.quicklook import write_quicklook_png
from tests.conftest import REPO_ROOT, write_raster

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1", "::1"])]

HEIGHT, WIDTH, DIM = 36, 54, 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: ``stitched_representation.npy`` (region means + noise), ``roi.tiff``; no quick-look."""
    folder = tmp_path_factory.mktemp("run")
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    mask[:6, :8] = 0
    write_raster(folder / "roi.tiff", mask)
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, DIM)) * 3
    data = (means[region_map()] + rng.normal(size=(HEIGHT, WIDTH, DIM))).astype(np.float32)
    data[mask == 0] = 0
    data[-1, -1] = 0  # inside the ROI, not embedded
    np.save(folder / serve.NPY_NAME, data)
    return folder


def region_map() -> np.ndarray:
    """(H, W) region index: 0, 1, 2 for the left, middle and right thirds."""
    return np.broadcast_to(np.arange(WIDTH) * 3 // WIDTH, (HEIGHT, WIDTH))


def embedding(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W, D) float64 embedding and its (H, W) valid mask, read straight from the files."""
    data = np.load(run_dir / serve.NPY_NAME).astype(np.float64)
    with rasterio.open(run_dir / "roi.tiff") as src:
        valid = (src.read(1) != 0) & np.any(data != 0, axis=-1)
    return data, valid


def cosine_to(data: np.ndarray, valid: np.ndarray, row: int, col: int) -> np.ndarray:
    """Cosine similarity of every pixel to (row, col), NaN where invalid, computed directly."""
    vector = data[row, col]
    with np.errstate(invalid="ignore", divide="ignore"):
        values = data @ vector / (np.linalg.norm(data, axis=-1) * np.linalg.norm(vector))
    return np.where(valid, values, np.nan)


@contextlib.contextmanager
def serving(explorer: serve.Explorer) -> Iterator[serve.ExplorerServer]:
    """Run the explorer's server on a free loopback port in a thread."""
    server = serve.make_server(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[serve.ExplorerServer]:
    """The explorer of ``run_dir`` in pixel mode (no basemap)."""
    source, root = serve.open_source(run_dir)
    with serving(serve.Explorer(source, root, serve.Settings())) as running:
        yield running


def request(server: serve.ExplorerServer, path: str, *, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` exactly as written (no normalisation) → (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, bands) uint8 of PNG bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as memory, memory.open() as src:
            assert src.driver == "PNG"
            return np.moveaxis(src.read(), 0, -1)


def load_npy(data: bytes) -> np.ndarray:
    """The array of ``.npy`` bytes."""
    return np.load(io.BytesIO(data), allow_pickle=False)


# --------------------------------------------------------------------------- HTTP


def test_meta_describes_the_grid(server: serve.ExplorerServer, run_dir: Path) -> None:
    status, headers, body = request(server, "/meta.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    meta = json.loads(body)
    assert (meta["height"], meta["width"], meta["channels"]) == (HEIGHT, WIDTH, DIM)
    assert meta["crs"] == "EPSG:32631" and meta["mode"] == "pixel" and meta["stride"] == 1
    assert meta["overlay_bounds"] == [[-HEIGHT, 0], [0, WIDTH]]
    with rasterio.open(run_dir / "roi.tiff") as src:
        west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    np.testing.assert_allclose(meta["bounds_4326"], [west, south, east, north], atol=1e-9)
    assert 5.2 < west < east < 5.5 and 50.5 < south < north < 50.7  # 664 km E, 5612 km N of UTM 31N
    assert meta["basemap"] is None and set(meta["files"]) == {"roi.tiff", serve.NPY_NAME}


def test_quicklook_rendered_when_absent(server: serve.ExplorerServer, run_dir: Path) -> None:
    status, headers, body = request(server, "/quicklook.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    image = decode_png(body)
    _, valid = embedding(run_dir)
    assert image.shape == (HEIGHT, WIDTH, 4)
    np.testing.assert_array_equal(image[..., 3] == 255, valid)
    assert (image[..., 3][~valid] == 0).all()
    # the first principal component separates the three regions: their mean colours differ
    colours = [image[..., :3][valid & (region_map() == k)].mean(axis=0) for k in range(3)]
    assert min(np.abs(a - b).max() for a, b in [(colours[0], colours[1]), (colours[1], colours[2])]) > 30
    assert not any(p.suffix == ".png" for p in run_dir.iterdir())  # rendered in memory, the folder untouched


def test_quicklook_beside_the_embedding_is_served_as_is(run_dir: Path, tmp_path: Path) -> None:
    for name in ("roi.tiff", serve.NPY_NAME):
        (tmp_path / name).symlink_to(run_dir / name)
    png = write_quicklook_png(tmp_path / serve.NPY_NAME, tmp_path / "roi.tiff",
                              tmp_path / "stitched_representation.png")
    source, root = serve.open_source(tmp_path)
    assert serve.Explorer(source, root, serve.Settings()).quicklook_png() == png.read_bytes()
    # a quick-look of another size (another --max-size) is not on the display grid: rendered instead
    rendered = serve.Explorer(source, root, serve.Settings(max_size=20)).quicklook_png()
    assert decode_png(rendered).shape == (12, 18, 4)


@pytest.mark.parametrize("row, col", [(20, 30), (6, 0), (35, 52)])
def test_similarity_equals_numpy_cosine(server: serve.ExplorerServer, run_dir: Path, row: int, col: int) -> None:
    data, valid = embedding(run_dir)
    expected = cosine_to(data, valid, row, col)
    status, _, body = request(server, f"/similarity.npy?row={row}&col={col}")
    assert status == 200
    values = load_npy(body)
    assert values.shape == (HEIGHT, WIDTH) and values.dtype == np.float32
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5, equal_nan=True)
    assert values[row, col] == pytest.approx(1.0, abs=1e-5)

    status, headers, png = request(server, f"/similarity?row={row}&col={col}")
    assert status == 200 and headers["X-Pixel"] == f"{row},{col}"
    image = decode_png(png)
    np.testing.assert_array_equal(image[..., 3] == 255, valid)
    low, high = map(float, headers["X-Range"].split(","))
    assert low == pytest.approx(np.nanpercentile(expected, 2), abs=1e-5)
    assert high == pytest.approx(np.nanpercentile(expected, 98), abs=1e-5)
    ramp = serve.colour_ramp()
    assert tuple(image[row, col, :3]) == tuple(ramp[-1])  # the clicked pixel is the most similar: top colour
    assert tuple(image[np.unravel_index(np.nanargmin(expected), expected.shape)][:3]) == tuple(ramp[0])


def test_similarity_on_a_strided_grid(run_dir: Path) -> None:
    source, root = serve.open_source(run_dir)
    explorer = serve.Explorer(source, root, serve.Settings(max_size=20))  # stride 3: 12 x 18
    data, valid = embedding(run_dir)
    values = explorer.similarity(20, 31)
    assert explorer.stride == 3 and values.shape == (12, 18)
    np.testing.assert_allclose(values, cosine_to(data, valid, 20, 31)[::3, ::3], atol=1e-5, equal_nan=True)


def test_classify_predicts_the_regions(server: serve.ExplorerServer, run_dir: Path) -> None:
    names = ["left", "middle", "right"]
    labelled = [(10, 2), (30, 10), (20, 20), (8, 30), (25, 40), (33, 50)]
    points = [{"row": r, "col": c, "label": names[region_map()[r, c]]} for r, c in labelled]
    status, _, body = request(server, "/classify.npy", method="POST", body=json.dumps(points).encode())
    assert status == 200
    classes = load_npy(body)
    _, valid = embedding(run_dir)
    assert classes.shape == (HEIGHT, WIDTH) and classes.dtype == np.int16
    assert (classes[~valid] == -1).all() and (classes[valid] >= 0).all()
    for point in points:
        assert classes[point["row"], point["col"]] == names.index(point["label"])
    assert (classes[valid] == region_map()[valid]).mean() > 0.95

    status, headers, png = request(server, "/classify", method="POST", body=json.dumps({"points": points}).encode())
    assert status == 200 and headers["Content-Type"] == "image/png"
    legend = json.loads(headers["X-Legend"])
    assert [name for name, _ in legend] == names
    image = decode_png(png)
    for point in points:
        colour = legend[names.index(point["label"])][1]
        assert "#" + bytes(image[point["row"], point["col"], :3]).hex() == colour
    np.testing.assert_array_equal(image[..., 3] == 255, valid)


@pytest.mark.parametrize("path, method, body, message", [
    ("/similarity?row=0&col=0", "GET", None, "outside the ROI"),
    ("/similarity?row=35&col=53", "GET", None, "outside the ROI"),  # in the ROI, not embedded
    ("/similarity?row=36&col=0", "GET", None, "off the 36 x 54 map"),
    ("/similarity?row=1.5&col=2", "GET", None, "whole pixel"),
    ("/similarity?row=x&col=2", "GET", None, "must be a number"),
    ("/similarity", "GET", None, "row= and col="),
    ("/classify", "POST", b"not json", "not JSON"),
    ("/classify", "POST", b"[]", "list of 1 to"),
    ("/classify", "POST", b'[{"row": 10, "col": 10, "label": "a"}, {"row": 20, "col": 20, "label": "a"}]',
     "1 label(s) given"),
    ("/classify", "POST", b'[{"row": 10, "col": 10, "label": "a"}, {"row": 0, "col": 0, "label": "b"}]',
     "(row 0, col 0) has no embedding"),
    ("/classify", "POST", b'[{"row": 10, "col": 10}]', "needs a label"),
])
def test_bad_requests_get_400_saying_why(server: serve.ExplorerServer, path: str, method: str,
                                         body: bytes | None, message: str) -> None:
    status, headers, answer = request(server, path, method=method, body=body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert message in json.loads(answer)["error"]


def test_oversized_bodies_are_refused_unread(server: serve.ExplorerServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:  # announce a body over the limit and send none: the answer comes without reading it
        connection.putrequest("POST", "/classify")
        connection.putheader("Content-Length", str(serve.MAX_BODY_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and "send fewer points" in json.loads(response.read())["error"]
    finally:
        connection.close()


@pytest.fixture(scope="module")
def outside(run_dir: Path) -> Path:
    """A secret outside the served folder, and symlinks in the folder pointing to it."""
    secret_dir = run_dir.parent / "outside"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_text("not yours")
    (run_dir / "link_out").symlink_to(secret_dir, target_is_directory=True)
    (run_dir / "escape.txt").symlink_to(secret_dir / "secret.txt")
    return secret_dir


@pytest.mark.parametrize("path", [
    "/static/../serve.py", "/static/%2e%2e/serve.py", "/static/..%2fserve.py", "/static/leaflet/../../serve.py",
    "/files/../outside/secret.txt", "/files/%2e%2e%2foutside%2fsecret.txt", "/files//etc/passwd",
    "/files/%2Fetc%2Fpasswd", "/files/..\\outside\\secret.txt", "/files/link_out/secret.txt", "/files/escape.txt",
    "/files/roi.tiff%00.png",
])
def test_paths_outside_the_served_folders_are_refused(server: serve.ExplorerServer, outside: Path,
                                                      path: str) -> None:
    status, _, body = request(server, path)
    assert status == 403, (path, body)
    assert b"not yours" not in body and b"import" not in body


def test_files_of_the_folder_and_static_assets_are_served(server: serve.ExplorerServer, run_dir: Path) -> None:
    status, headers, body = request(server, "/files/roi.tiff")
    assert status == 200 and body == (run_dir / "roi.tiff").read_bytes()
    assert headers["Content-Type"] == "image/tiff"
    assert request(server, "/files/missing.tif")[0] == 404
    assert request(server, "/nowhere")[0] == 404
    status, headers, body = request(server, "/static/leaflet/leaflet.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript" and body.startswith(b"/* @preserve")


def test_page_loads_nothing_from_elsewhere(server: serve.ExplorerServer) -> None:
    status, headers, page = request(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "http" not in policy
    links = re.findall(rb'(?:src|href)="([^"]+)"', page)
    assert len(links) == 4
    for link in links:
        assert not re.match(rb"^([a-z]+:)?//", link), link
        assert request(server, "/" + link.decode())[0] == 200
    css = request(server, "/static/leaflet/leaflet.css")[2]
    for image in re.findall(rb"url\((images/[^)]+)\)", css):
        assert request(server, "/static/leaflet/" + image.decode())[0] == 200


def test_requests_for_other_host_names_are_refused(server: serve.ExplorerServer) -> None:
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 must not read the folder."""
    assert request(server, "/meta.json", headers={"Host": "evil.example"})[0] == 403
    assert request(server, "/files/roi.tiff", headers={"Host": "evil.example:8000"})[0] == 403
    port = server.server_address[1]
    assert request(server, "/meta.json", headers={"Host": f"localhost:{port}"})[0] == 200


def test_basemap_mode_reprojects_overlays_and_takes_lonlat(run_dir: Path) -> None:
    basemap = "https://{s}.tile.example.org/{z}/{x}/{y}.png"
    source, root = serve.open_source(run_dir)
    explorer = serve.Explorer(source, root, serve.Settings(basemap=basemap))
    with serving(explorer) as running:
        meta = json.loads(request(running, "/meta.json")[2])
        assert meta["mode"] == "geographic" and meta["basemap"] == basemap
        (south, west), (north, east) = meta["overlay_bounds"]
        b_west, b_south, b_east, b_north = meta["bounds_4326"]
        assert south <= b_south + 1e-9 and west <= b_west + 1e-9 and north >= b_north - 1e-9 and east >= b_east - 1e-9
        status, headers, png = request(running, "/quicklook.png")
        assert status == 200 and "img-src 'self' blob: data: https://*.tile.example.org" in headers[
            "Content-Security-Policy"]
        assert decode_png(png).shape == (explorer.warp.height, explorer.warp.width, 4)
        # the centre of pixel (row 20, col 30) in longitude/latitude names that pixel
        x, y = source.grid.transform @ (30.5, 20.5)
        (lon,), (lat,) = rasterio.warp.transform(source.grid.rasterio_crs, "EPSG:4326", [x], [y])
        status, headers, _ = request(running, f"/similarity?lat={lat}&lon={lon}")
        assert status == 200 and headers["X-Pixel"] == "20,30"
        by_lonlat = load_npy(request(running, f"/similarity.npy?lat={lat}&lon={lon}")[2])
        by_pixel = load_npy(request(running, "/similarity.npy?row=20&col=30")[2])
        np.testing.assert_array_equal(by_lonlat, by_pixel)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("int8", 0.02)])
def test_exported_geotiffs_serve_the_same_similarity(run_dir: Path, tmp_path: Path, dtype: str,
                                                     tolerance: float) -> None:
    tif = tmp_path / "emb.tif"
    assert convert_npy2tiff.main(["--npy", str(run_dir / serve.NPY_NAME), "--ref-tiff", str(run_dir / "roi.tiff"),
                                  "--out", str(tif), "--dtype", dtype, "--no-png", "--no-stac",
                                  "--no-run-metadata", "-q"]) == 0
    source, root = serve.open_source(tif)
    assert isinstance(source, serve.TiffSource) and root == tmp_path
    explorer = serve.Explorer(source, root, serve.Settings())
    data, valid = embedding(run_dir)
    np.testing.assert_allclose(explorer.similarity(20, 30), cosine_to(data, valid, 20, 30), atol=tolerance,
                               equal_nan=True)
    _, pixel_valid = source.read_pixels(np.array([0, 20, 35]), np.array([0, 30, 53]))
    assert pixel_valid.tolist() == [False, True, False]
    assert serve.open_source(tmp_path)[0].path == tif  # a folder with one embedding .tif and no .npy


def test_unservable_inputs_say_what_to_pass(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="does not exist"):
        serve.open_source(tmp_path / "missing")
    with pytest.raises(InputDataError, match="pass the file to serve"):
        serve.open_source(tmp_path)
    (tmp_path / "emb.npy").symlink_to(run_dir / serve.NPY_NAME)
    with pytest.raises(InputDataError, match="--roi"):
        serve.open_source(tmp_path / "emb.npy")
    assert serve.open_source(tmp_path / "emb.npy", run_dir / "roi.tiff")[0].grid.shape == (HEIGHT, WIDTH)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputDataError, match=r"neither a \.npy nor a GeoTIFF"):
        serve.open_source(tmp_path / "notes.txt")
    with pytest.raises(InputDataError, match=r"1 uint8 band\(s\); expected an embedding GeoTIFF"):
        serve.open_source(run_dir / "roi.tiff")


def test_cli_refuses_bad_options(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main([str(run_dir), "--basemap", "tiles.example.org/{z}"]) == 2
    assert "not an XYZ tile URL" in capsys.readouterr().err
    assert serve.main([str(run_dir / "nothing")]) == 2
    source, root = serve.open_source(run_dir)
    with serving(serve.Explorer(source, root, serve.Settings())) as running, \
            pytest.raises(BTFMError, match="choose another --port"):
        serve.make_server(running.explorer, "127.0.0.1", running.server_address[1])


def test_console_script_serves_and_stops_on_ctrl_c(run_dir: Path) -> None:
    script = Path(sys.executable).with_name("btfm-serve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "btfm_infer.serve"]
    process = subprocess.Popen([*command, str(run_dir), "--port", "0", "-q"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", url)
        assert match, url
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        connection.request("GET", "/meta.json")
        assert json.loads(connection.getresponse().read())["width"] == WIDTH
        connection.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the page in a browser


def _chromium() -> tuple[str, str]:
    """Paths of Chromium and its driver, or skip saying how to install them."""
    browser = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed: apt-get install chromium chromium-driver "
                    "(Debian; .ci/run installs them where it can)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -r requirements.txt")
    return browser, driver


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium driven by selenium."""
    browser_path, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1000,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _loaded_image(driver: object, css: str) -> object:
    """Wait for an ``<img>`` matching ``css`` that has finished loading a non-empty image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: object) -> object:
        for element in d.find_elements(By.CSS_SELECTOR, css):  # type: ignore[attr-defined]
            if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element):
                return element
        return False

    return WebDriverWait(driver, 30).until(ready, f"no loaded image {css}")


def _click_pixel(driver: object, image: object, row: int, col: int) -> None:
    """Click the centre of pixel (row, col) of a full-map overlay image."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = image.rect  # type: ignore[attr-defined]
    dx = (col + 0.5) / WIDTH * rect["width"] - rect["width"] / 2  # offsets are from the element's centre
    dy = (row + 0.5) / HEIGHT * rect["height"] - rect["height"] / 2
    ActionChains(driver).move_to_element_with_offset(image, int(dx), int(dy)).click().perform()  # type: ignore[arg-type]


def _status(driver: object, contains: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def has(d: object) -> str | bool:
        text = d.find_element(By.ID, "status").text  # type: ignore[attr-defined]
        return text if contains in text else False

    return WebDriverWait(driver, 30).until(has, f"status never said {contains!r}")


def _map_area(screenshot: bytes, rect: dict[str, float]) -> np.ndarray:
    """The (h, w, 3) pixels of a screenshot inside ``rect`` (CSS px; the window's device pixel ratio is 1)."""
    image = decode_png(screenshot)[..., :3]
    top, left = int(rect["y"]) + 2, int(rect["x"]) + 2
    return image[top:int(rect["y"] + rect["height"]) - 2, left:int(rect["x"] + rect["width"]) - 2]


def test_page_in_chromium_click_shows_similarity_and_classes(browser: object, server: serve.ExplorerServer,
                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server.url)  # type: ignore[attr-defined]
    quicklook = _loaded_image(driver, "#map img.layer-quicklook")
    _status(driver, f"{WIDTH} x {HEIGHT} px")
    assert driver.find_element(By.ID, "title").text == serve.NPY_NAME  # type: ignore[attr-defined]
    rect = quicklook.rect  # type: ignore[attr-defined]
    assert rect["width"] > 300 and rect["height"] > 200  # fitted to the window
    before = _map_area(driver.get_screenshot_as_png(), rect)  # type: ignore[attr-defined]

    _click_pixel(driver, quicklook, 20, 30)
    similarity = _loaded_image(driver, "#map img.layer-similarity")
    assert similarity.get_attribute("src").startswith("blob:")  # type: ignore[attr-defined]
    assert _status(driver, "similarity to pixel") == "similarity to pixel (row 20, col 30)"
    shot = driver.get_screenshot_as_png()  # type: ignore[attr-defined]
    (tmp_path / "similarity.png").write_bytes(shot)
    after = _map_area(shot, rect)
    assert shot.startswith(b"\x89PNG")
    assert len(np.unique(after.reshape(-1, 3), axis=0)) > 50  # a picture, not a blank page
    background = np.array([0x22, 0x22, 0x22])
    assert (np.abs(after.astype(int) - background).sum(-1) > 30).mean() > 0.8  # the overlay covers the map
    assert (np.abs(after.astype(int) - before.astype(int)).sum(-1) > 30).mean() > 0.5  # the layer changed it

    driver.find_element(By.CSS_SELECTOR, "input[name=mode][value=label]").click()  # type: ignore[attr-defined]
    label = driver.find_element(By.ID, "label")  # type: ignore[attr-defined]
    for name, pixels in (("left", [(20, 4), (30, 12)]), ("middle", [(20, 26), (10, 30)]),
                         ("right", [(20, 45), (30, 50)])):
        label.clear()
        label.send_keys(name)
        for row, col in pixels:
            _click_pixel(driver, quicklook, row, col)
    assert driver.find_element(By.ID, "point-count").text == "6"  # type: ignore[attr-defined]
    driver.find_element(By.ID, "classify").click()  # type: ignore[attr-defined]
    _loaded_image(driver, "#map img.layer-classes")
    assert _status(driver, "class map") == "class map of 3 classes"
    legend = driver.find_element(By.ID, "legend").text  # type: ignore[attr-defined]
    assert legend.split("\n") == ["classes", "left", "middle", "right"]
    shot = driver.get_screenshot_as_png()  # type: ignore[attr-defined]
    (tmp_path / "classes.png").write_bytes(shot)
    classes = _map_area(shot, rect)
    assert len(np.unique(classes.reshape(-1, 3), axis=0)) > 3
    if os.environ.get("BTFM_SCREENSHOTS"):  # keep them for a look: BTFM_SCREENSHOTS=folder
        for name in ("similarity.png", "classes.png"):
            shutil.copy(tmp_path / name, Path(os.environ["BTFM_SCREENSHOTS"]) / name)
