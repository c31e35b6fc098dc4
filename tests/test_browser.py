"""The unit browser in a real browser: JupyterLab on loopback, notebooks/08_unit_browser.ipynb opened in
headless Chromium (Debian's package, driven by Playwright's Python API), Run All Cells, the slider moved
by keyboard and by drag; the rendered caption and image must follow.

Skips (with the reason) when Chromium, Playwright or JupyterLab is missing, unless
``KDLIB_BROWSER_TEST=required`` (set by ``.ci/run``), when a missing piece fails the test.
Everything it starts (server, kernel, browser) is stopped; every Jupyter/IPython/matplotlib config and
runtime folder points into the test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_unit_browser.ipynb"
REQUIRED = os.environ.get("KDLIB_BROWSER_TEST", "").strip().lower() == "required"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LABEL = ".kdlib-unit-browser .kdlib-unit-label"
HANDLE = ".kdlib-unit-browser .widget-slider .noUi-handle"
READOUT = ".kdlib-unit-browser .widget-slider .widget-readout"
IMAGE = ".kdlib-unit-browser img"


def _chromium() -> str | None:
    """``KDLIB_CHROMIUM`` when set (and only it), else Debian's binary or a ``chromium`` on PATH."""
    override = os.environ.get("KDLIB_CHROMIUM")
    for candidate in [override] if override else CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def _missing() -> list[str]:
    missing = []
    if _chromium() is None:
        missing.append("Chromium (apt-get install -y chromium, or KDLIB_CHROMIUM=/path/to/chromium)")
    for module, what in (("playwright", "playwright (pip install playwright)"), ("jupyterlab", "jupyterlab"),
                         ("jupyterlab_widgets", "jupyterlab_widgets (ipywidgets' JupyterLab extension)")):
        if importlib.util.find_spec(module) is None:
            missing.append(what)
    return missing


def _skip_or_fail(missing: list[str], required: bool) -> None:
    if missing and required:
        pytest.fail(f"KDLIB_BROWSER_TEST=required but missing: {'; '.join(missing)}")
    if missing:
        pytest.skip(f"real-browser test needs {'; '.join(missing)} (KDLIB_BROWSER_TEST=required makes this a failure)")


@pytest.fixture(scope="module")
def browser_pieces():
    _skip_or_fail(_missing(), REQUIRED)
    return _chromium()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAB_SETTINGS = {
    # No "get notified about Jupyter news?" toast, no request to a website.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def _lab_settings(folder: Path) -> None:
    for name, values in LAB_SETTINGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(values))


def _environment(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                      ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (base / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / sub)
    _lab_settings(base / "settings")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("KDLIB_WIDGETS", None)  # the kernel must decide by itself that JupyterLab renders widgets
    return env


def _prepare_notebook(folder: Path, params: Path, run_folder: Path) -> Path:
    """The notebook without outputs, its parameters pointing at a dissected study (a copy: the server may save it)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if "parameters" in cell.metadata.get("tags", []):
                lines = cell.source.splitlines()
                given = {"params": str(params), "run_folder": str(run_folder)}
                lines = [f"{line.split(' = ')[0]} = {given[line.split(' = ')[0]]!r}" if line.split(" = ")[0] in given else line
                         for line in lines]
                cell.source = "\n".join(lines)
                assert str(params) in cell.source and str(run_folder) in cell.source, "the parameters cell no longer declares params and run_folder"
    nb.metadata.pop("widgets", None)
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / NOTEBOOK.name)
    return folder / NOTEBOOK.name


def _api(port: int, token: str, path: str, method: str = "GET", body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}?token={token}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        body = reply.read()
    return json.loads(body) if body else None


def _wait_for_server(process: subprocess.Popen, port: int, token: str, log: Path, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            _api(port, token, "/api/status")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.25)
    raise AssertionError(f"jupyter lab did not answer within {limit:.0f} s: {log.read_text()[-2000:]}")


def _stop_server(process: subprocess.Popen, port: int, token: str) -> None:
    """Shut every kernel down through the API, then the server by its PID (SIGTERM, SIGKILL after 15 s)."""
    try:
        for kernel in _api(port, token, "/api/kernels") or []:
            _api(port, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except (urllib.error.URLError, OSError):
        pass
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture()
def lab(browser_pieces, tmp_path, tiny_dissected):
    """A JupyterLab server on 127.0.0.1 with a token, serving a copy of the notebook that browses the
    tiny study's saved dissection (``tiny_dissected``); stopped afterwards."""
    env = _environment(tmp_path / "home")
    root = tmp_path / "lab"
    _prepare_notebook(root, *tiny_dissected)
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyter-lab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
               f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", "--allow-root"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(process, port, token, log)
        # Start the notebook's kernel session before the page opens: JupyterLab then attaches to it
        # instead of choosing a kernel itself, which under load races with its kernelspec request.
        _api(port, token, "/api/sessions", method="POST",
             body={"path": NOTEBOOK.name, "name": NOTEBOOK.name, "type": "notebook", "kernel": {"name": "python3"}})
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}", "port": port, "token": token}
    finally:
        _stop_server(process, port, token)
    assert process.returncode is not None


try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the test skips (or fails when required) in the fixture
    PlaywrightTimeout = TimeoutError


def _unit_number(page) -> int:
    return int(page.locator(LABEL).get_attribute("data-unit"))


def _wait_for_change(page, value_js: str, old: str) -> str:
    """The new value of ``value_js`` once it differs from ``old`` (the kernel answers asynchronously)."""
    page.wait_for_function(f"old => ({value_js}) !== old", arg=old, timeout=20_000)
    return page.evaluate(value_js)


CAPTION_JS = f"document.querySelector('{LABEL}') && document.querySelector('{LABEL}').textContent"
IMAGE_JS = f"document.querySelector('{IMAGE}') && document.querySelector('{IMAGE}').src"
SETTLED_JS = (
    f"old => {{ const label = document.querySelector('{LABEL}'), readout = document.querySelector('{READOUT}');"
    " return label.textContent !== old && label.dataset.unit === readout.textContent.trim(); }"
)


RUN_ALL = ".lm-Menu-item[data-command='runmenu:run-all']"
STARTED_JS = "Array.from(document.querySelectorAll('.jp-InputPrompt')).some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"


def _wait_for_kernel(page) -> None:
    """The notebook's kernel is attached in the page (toolbar: its name, not "No Kernel") and idle. The
    idle indicator alone is not enough: it can show before the kernel is attached, and Run All then
    opens a "Select Kernel" dialog instead of running."""
    page.locator(".jp-NotebookPanel-toolbar .jp-KernelName", has_text="Python 3").wait_for(timeout=60_000)
    page.wait_for_selector(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def _accept_kernel_dialog(page) -> bool:
    """Accept a "Select Kernel" dialog (it offers the notebook's Python 3); False when none is open."""
    dialog = page.locator(".jp-Dialog")
    if not dialog.count():
        return False
    text = dialog.first.inner_text()
    assert text.startswith("Select Kernel") and "Python 3" in text, f"unexpected dialog: {text!r}"
    dialog.locator(".jp-mod-accept").first.click()
    _wait_for_kernel(page)
    return True


def _open_notebook(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    _wait_for_kernel(page)


def _run_all(page) -> None:
    """Menu "Run" -> "Run All Cells", once the item is enabled. If no cell has started after 15 s, a
    "Select Kernel" dialog (JupyterLab lost the kernel) is accepted and Run All clicked once more."""
    for _ in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.wait_for_selector(f"{RUN_ALL}:not(.lm-mod-disabled)", timeout=20_000)
        assert page.locator(f"{RUN_ALL} .lm-Menu-itemLabel").inner_text() == "Run All Cells"
        page.locator(RUN_ALL).click()
        try:
            page.wait_for_function(STARTED_JS, timeout=15_000)
            return
        except PlaywrightTimeout:
            if not _accept_kernel_dialog(page):
                page.keyboard.press("Escape")
    raise AssertionError("Run -> Run All Cells started no cell")


def _first_unit(page) -> tuple[str, str, bytes]:
    """After Run All: the browser shows unit 1 of layer3. Returns (caption, image src, image pixels)."""
    page.wait_for_selector(f"{HANDLE}, .jp-OutputArea-output:has-text('Error displaying widget')", state="visible", timeout=90_000)
    broken = page.locator(".jp-OutputArea-output", has_text="Error displaying widget")
    assert not broken.count(), f"JupyterLab could not display a widget: {broken.first.inner_text()!r}"
    page.wait_for_function(f"({IMAGE_JS} || '').startsWith('blob:')", timeout=20_000)
    caption, image = page.evaluate(CAPTION_JS), page.evaluate(IMAGE_JS)
    assert _unit_number(page) == 1 and caption.startswith("layer3 unit 1: ")
    assert page.locator(READOUT).inner_text().strip() == "1"
    return caption, image, page.locator(IMAGE).screenshot()


def _press_right(page, caption: str, image: str, pixels: bytes) -> tuple[str, str]:
    """ArrowRight on the focused handle moves to unit 2: new caption, new image."""
    page.locator(HANDLE).focus()
    page.keyboard.press("ArrowRight")
    caption = _wait_for_change(page, CAPTION_JS, caption)
    assert _unit_number(page) == 2 and caption.startswith("layer3 unit 2: ")
    assert page.locator(READOUT).inner_text().strip() == "2"
    image = _wait_for_change(page, IMAGE_JS, image)
    assert page.locator(IMAGE).screenshot() != pixels
    return caption, image


def _drag(page, caption: str, image: str) -> int:
    """Drag the handle to 60% of the track: the caption follows the readout, the image changes."""
    box = page.locator(HANDLE).bounding_box()
    track = page.locator(".kdlib-unit-browser .widget-slider .noUi-target").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * 0.6, y, steps=12)
    page.mouse.up()
    page.wait_for_function(SETTLED_JS, arg=caption, timeout=20_000)  # the caption has caught up with the slider
    dragged = _unit_number(page)
    assert 10 <= dragged <= 25, dragged  # about 60% along 32 units (resnet8_w8's layer3)
    assert page.locator(READOUT).inner_text().strip() == str(dragged)
    assert page.evaluate(CAPTION_JS).startswith(f"layer3 unit {dragged}: ")
    _wait_for_change(page, IMAGE_JS, image)
    return dragged


def _keep(*paths: Path) -> list[Path]:
    """Copies in ``KDLIB_TEST_ARTIFACTS`` (default: outputs/test-artifacts/browser, git-ignored), which
    outlive pytest's temporary folders (it keeps only the last three runs' of this user)."""
    folder = Path(os.environ.get("KDLIB_TEST_ARTIFACTS") or ROOT / "outputs" / "test-artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(path, folder / path.name)) for path in paths if path.exists()]


def _screenshot(page, path: Path) -> None:
    """The browser's output area (JupyterLab scrolls inside its panel, so not a page screenshot)."""
    output = page.locator(".jp-OutputArea-output", has=page.locator(".kdlib-unit-browser"))
    output.scroll_into_view_if_needed()
    output.screenshot(path=str(path))


@pytest.mark.slow
def test_unit_browser_in_jupyterlab(browser_pieces, lab, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    shot = tmp_path / "unit_browser.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_pieces, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _open_notebook(page, lab["url"])
            _run_all(page)
            caption, image, pixels = _first_unit(page)
            caption, image = _press_right(page, caption, image, pixels)
            dragged = _drag(page, caption, image)
            _screenshot(page, shot)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            kept = _keep(tmp_path / "failure.png", tmp_path / "jupyter-lab.log")
            with capsys.disabled():
                print(f"\nbrowser test failed; page screenshot and server log: {', '.join(map(str, kept))}")
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 5_000
    kept = _keep(shot)[0]
    with capsys.disabled():
        print(f"\nunit browser screenshot: {shot} (copy: {kept}; unit {dragged} shown; browser part {time.perf_counter() - started:.1f} s)")

def test_missing_chromium_skips_unless_required(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CHROMIUM", str(tmp_path / "no-chromium"))
    missing = _missing()
    assert missing and missing[0].startswith("Chromium")
    with pytest.raises(pytest.skip.Exception, match="real-browser test needs Chromium"):
        _skip_or_fail(missing, required=False)
    with pytest.raises(pytest.fail.Exception, match="KDLIB_BROWSER_TEST=required but missing: Chromium"):
        _skip_or_fail(missing, required=True)
    _skip_or_fail([], required=True)  # nothing missing: neither
