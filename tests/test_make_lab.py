"""`make lab` as a person runs it: prints the URL, serves course/ without the "get notified about official
Jupyter news?" pop-up, stops on one Ctrl-C, and refuses a port that is already in use instead of hanging or
moving to another one."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_lab(port, log):
    """`make lab` with a terminal for stdin, as a person runs it: JupyterLab installs its own Ctrl-C
    handler (the one `answer_yes` applies to) only when stdin is a terminal. Without one, Ctrl-C is a
    KeyboardInterrupt, and under load the server then hung for more than 30 s (a startup probe of
    jupyter_lsp, `npm prefix -g`, was running). The terminal stays open until `_finish`."""
    import pty

    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_PORT={port}", "LAB_ARGS=--no-browser"],
                                cwd=ROOT, stdin=terminal, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        os.close(terminal)
    proc.terminal = controller
    return proc


def _finish(proc):
    """Kill what is left of `make lab` and close its terminal. True if something had to be killed."""
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    os.close(proc.terminal)
    return running


def _wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_make_lab_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with open(tmp_path / "lab.log", "w") as log:
            proc = _make_lab(port, log)
            try:
                code = proc.wait(timeout=120)
            finally:
                _finish(proc)
    out = (tmp_path / "lab.log").read_text()
    assert code != 0, out
    assert f"port {port} is not available" in out, out


def test_make_lab_prints_the_url_serves_the_course_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        proc = _make_lab(port, log)
        try:
            url = _wait_for(lambda: re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)", log_path.read_text()),
                            120, "the URL in make lab's output")
            token = url.group(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=30) as r:
                names = {item["name"] for item in json.load(r)["content"]}
            assert "01_receptive_fields.ipynb" in names, f"JupyterLab does not open on course/: {names}"
            # The pop-up asks while fetchNews is "none" (the schema's default); make setup's override says "false".
            notification = "@jupyterlab/apputils-extension:notification"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab/api/settings/{notification}?token={token}",
                                        timeout=30) as r:
                settings = json.load(r)
            assert settings["schema"]["properties"]["fetchNews"]["default"] == "false", settings["schema"]
            assert settings["settings"].get("fetchNews", "false") != "none", settings["settings"]
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does to the foreground group
            proc.wait(timeout=30)  # one Ctrl-C is enough: no "Shutdown this Jupyter server (y/[n])?" prompt
        finally:
            if _finish(proc):
                raise AssertionError("make lab was still running 30 s after Ctrl-C:\n" + log_path.read_text())
    assert "Shutting down..." in log_path.read_text(), "Ctrl-C did not go through JupyterLab's own handler"
    with socket.socket() as s:  # nothing listens any more (SO_REUSEADDR: our own request left a TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
