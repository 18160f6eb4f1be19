"""The data scientist's loop in a real browser: JupyterLab in headless Chromium (Selenium + chromedriver).

01-train is opened and run with the Run menu's "Run All Cells", a parameter is edited in the page and
everything run again in the same kernel, then 02-evaluate is opened from the file browser and run. MLflow
must then hold two separate training runs with their own parameters, and the page must show the
evaluation figure, the candidate taken and the gate's verdict, with nothing on stderr. Screenshots of
each step are kept in runs/test-artifacts/lab-browser/.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port

from churnkit import registry
from churnkit.config import default_runs_dir, load_config
from churnkit.runner import notebooks_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = default_runs_dir() / "test-artifacts" / "lab-browser"
RUN_ALL_TIMEOUT = 150

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="chromium and chromedriver are not installed (`make test-setup` installs Debian's chromium and "
           "chromium-driver)",
)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free port with a token, serving a copy of notebooks/, its store in a temp runs folder."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(notebooks_dir(), root / "notebooks")
    runs = root / "runs"
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_OUTPUT_NOTEBOOK", "MPLBACKEND")}
    env |= {"CHURNKIT_RUNS_DIR": str(runs), "JUPYTER_CONFIG_DIR": str(root / "config"),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}"]
    if os.getuid() == 0:  # as `make lab` does: Jupyter refuses root without it (containers, CI images)
        cmd.append("--allow-root")
    # as `make lab` does: kernels on IPC sockets in the runtime folder, no TCP port and no TCP warning
    runtime = subprocess.run([sys.executable, "-m", "jupyter", "--runtime-dir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    cmd += ["--KernelManager.transport=ipc", f"--KernelManager.ip={runtime}/lab-kernel-ipc"]
    # No calls to the internet from the page: JupyterLab's news and update checks off.
    notification = root / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=root / "notebooks", stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (root / "jupyterlab.log").read_text()[-3000:]
        time.sleep(0.3)
    yield {"url": base, "token": token, "runs": runs, "root": root}
    with contextlib.suppress(ProcessLookupError):  # the server and every kernel it started
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(predicate, timeout: float, what: str, driver=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if driver is not None:
                _shot(driver, "timeout")
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _panel(driver, name: str):
    """The notebook panel of ``name`` (the visible one of the main area)."""
    from selenium.webdriver.common.by import By

    for panel in driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel"):
        if panel.is_displayed():
            return panel
    raise AssertionError(f"no visible notebook panel for {name}")


def _prompts(panel) -> list[str]:
    from selenium.webdriver.common.by import By

    return [p.text.strip() for p in panel.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea-prompt")]


def _run_all(driver, name: str, after: int) -> int:
    """Run menu → Run All Cells; waits until every code cell ran (numbers above ``after``) or one failed."""
    from selenium.webdriver.common.by import By

    menus = [m for m in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if m.text.strip() == "Run"]
    menus[0].click()
    item = _wait(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]')
                          if e.is_displayed()], 10, "the Run All Cells menu item", driver)
    item[0].click()
    panel = _panel(driver, name)

    def done():
        _accept_kernel(driver)
        numbers = [int(m.group(1)) for p in _prompts(panel) if (m := re.search(r"\[(\d+)\]", p))]
        busy = any("*" in p for p in _prompts(panel))
        failed = panel.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        if not busy and numbers and (min(numbers) > after or failed):
            return max(numbers)
        return None

    return _wait(done, RUN_ALL_TIMEOUT, f"Run All of {name}", driver)


def _accept_kernel(driver) -> bool:
    """JupyterLab may ask which kernel to start for a notebook opened for the first time: take Python 3."""
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept")
               if b.is_displayed()]
    if buttons:
        buttons[0].click()
    return bool(buttons)


def _kernel_ready(driver, name: str) -> None:
    """Wait for the notebook's kernel: the kernel dialog answered, or the status bar showing it idle."""
    from selenium.webdriver.common.by import By

    def ready():
        if _accept_kernel(driver):
            return False
        status = driver.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-Item")
        return any("Python 3" in e.text and "Idle" in e.text for e in status)

    _wait(ready, 60, f"the kernel of {name}", driver)


def _open(driver, lab, name: str):
    from selenium.webdriver.common.by import By

    driver.get(f"{lab['url']}/lab/tree/{name}.ipynb?token={lab['token']}")
    panel = _wait(lambda: [p for p in driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel") if p.is_displayed()],
                  60, f"{name} to open", driver)[0]
    _kernel_ready(driver, name)
    return panel


def _open_from_file_browser(driver, name: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    items = _wait(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, ".jp-DirListing-item")
                           if f"{name}.ipynb" in i.text], 20, f"{name} in the file browser", driver)
    ActionChains(driver).double_click(items[0]).perform()
    _wait(lambda: [t for t in driver.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab.lm-mod-current")
                   if f"{name}.ipynb" in t.text], 30, f"{name} to open", driver)
    _kernel_ready(driver, name)


def _edit_parameter(driver, panel, old: str, new: str) -> None:
    """Click into the parameters cell's line ``old = ...`` and replace ``old``'s value text by ``new``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    line = next(e for e in panel.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .cm-line") if e.text.startswith(old))
    line.click()
    start = old.index('"') + 1
    value = old[start:].split('"')[0]
    chain = ActionChains(driver).send_keys(Keys.HOME)
    for _ in range(start):
        chain.send_keys(Keys.ARROW_RIGHT)
    chain.key_down(Keys.SHIFT)
    for _ in range(len(value)):
        chain.send_keys(Keys.ARROW_RIGHT)
    chain.key_up(Keys.SHIFT).send_keys(new).send_keys(Keys.ESCAPE).perform()
    _wait(lambda: [e for e in panel.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .cm-line")
                   if e.text.startswith(old.replace(value, new))], 10, "the edited parameter", driver)


def _outputs_text(panel) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(o.text for o in panel.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))


def _stderr(panel) -> list[str]:
    from selenium.webdriver.common.by import By

    return [o.text for o in panel.find_elements(
        By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]


def test_run_all_edit_run_all_then_evaluate_in_jupyterlab(lab, browser):
    from selenium.webdriver.common.by import By

    panel = _open(browser, lab, "01-train")
    first = _run_all(browser, "01-train", 0)
    _shot(browser, "1-train-logreg")
    assert "candidate logged in MLflow run" in _outputs_text(panel), _outputs_text(panel)[-2000:]
    assert not _stderr(panel), _stderr(panel)

    _edit_parameter(browser, panel, 'model = "logreg"', "hgb")
    second = _run_all(browser, "01-train", first)
    _shot(browser, "2-train-hgb")
    text = _outputs_text(panel)
    assert second > first and "candidate logged in MLflow run" in text and not _stderr(panel), text[-2000:]

    _open_from_file_browser(browser, "02-evaluate")
    evaluate = _panel(browser, "02-evaluate")
    _run_all(browser, "02-evaluate", 0)
    browser.execute_script("arguments[0].scrollIntoView()", evaluate.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")[0])
    _shot(browser, "3-evaluate")
    text = _outputs_text(evaluate)

    config = load_config(lab["runs"])
    runs = registry.client(config).search_runs([registry.setup_tracking(config)], "tags.`churnkit.notebook` = '01-train'",
                                         order_by=["attributes.start_time ASC"])
    assert len(runs) == 2, [r.data.params for r in runs]
    logreg, hgb = runs
    assert logreg.info.run_id != hgb.info.run_id
    assert logreg.data.params["model"] == "logreg" and hgb.data.params["model"] == "hgb"
    assert logreg.data.params["data_path"] == "" == hgb.data.params["data_path"]
    assert logreg.info.status == "FINISHED"  # ended by the second Run All, not rewritten by it
    assert logreg.data.tags["churnkit.lab_session"] == hgb.data.tags["churnkit.lab_session"]

    # 02-evaluate took the hgb candidate trained in this session, and says so.
    assert f"candidate  run {hgb.info.run_id} (01-train, model hgb)" in text, text[-3000:]
    assert "in this JupyterLab session" in text
    assert re.search(r"(PASSED|REFUSED): holdout roc_auc|REFUSED: ", text), text[-3000:]
    assert "registered churn v1" in text or "not registered" in text
    images = evaluate.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
    assert images, "the evaluation figure is rendered in the page"
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]",
                                  images[0])
    assert size[0] >= 600 and size[1] >= 400, size
    assert not _stderr(evaluate), _stderr(evaluate)
    assert not re.search(r"^\{'champion'", text, re.M), "no bare dict as a cell output"
    # the kernels ran on IPC sockets, as `make lab` starts them: no TCP warning in the server's log
    log = (lab["root"] / "jupyterlab.log").read_text()
    assert "Kernel started" in log and "running over TCP" not in log, log[-3000:]

