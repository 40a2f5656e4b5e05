"""A real `halyard standalone` for the client's tests: the binary in HALYARD_BIN (the Rust
test `tests/python_sdk.rs` sets it), on a free loopback port, in a temporary folder with
`halyard datagen`'s data and a copy of the demo spec."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    binary = os.environ.get("HALYARD_BIN")
    if not binary:
        pytest.skip("HALYARD_BIN is not set: run these through `cargo test --test python_sdk`")
    root = tmp_path_factory.mktemp("standalone")
    subprocess.run([binary, "datagen", "--rows", "3000"], cwd=root, check=True, capture_output=True)
    (root / "examples").mkdir()
    shutil.copy(os.path.join(REPO, "examples", "campaign-response.toml"), root / "examples")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = open(root / "standalone.log", "w")
    proc = subprocess.Popen(
        [binary, "standalone", "--listen", address, "--data-dir", str(root / "state")],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/healthz", timeout=1).read()
            if (root / "state" / "admin.key").exists():
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise RuntimeError("the standalone did not start: " + (root / "standalone.log").read_text())
        time.sleep(0.1)
    key = (root / "state" / "admin.key").read_text().strip()
    yield {"address": address, "key": key, "root": root, "binary": binary}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
