"""What the Python tests share: the fluxplane binary, starting its server, and Azure SDK clients pointed at it."""

import json
import os
import pathlib
import subprocess
import time

from azure.core.pipeline.policies import SansIOHTTPPolicy

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("FLUXPLANE_BIN", str(ROOT / "target" / "debug" / "fluxplane"))


class StaticBearer(SansIOHTTPPolicy):
    """Sends a fluxplane user token on every request (Azure's bearer policy refuses plain HTTP)."""

    def __init__(self, token):
        super().__init__()
        self._token = token

    def on_request(self, request):
        request.http_request.headers["Authorization"] = f"Bearer {self._token}"


class UnusedCredential:
    """The clients insist on a credential; the authentication policy above makes it unused."""

    def get_token(self, *scopes, **kwargs):
        raise AssertionError("the static bearer policy should have replaced the credential")


def client(cls, server, subscription, **kwargs):
    """An Azure SDK client of `cls` for `server` (as `start_server` answers it); its pollers check every 0.1 s
    unless `polling_interval` says otherwise."""
    kwargs.setdefault("polling_interval", 0.1)
    return cls(
        UnusedCredential(),
        subscription,
        base_url=server["base_url"],
        authentication_policy=StaticBearer(server["token"]),
        **kwargs,
    )


def wait_for_log(path, message, process, timeout=60):
    """The first JSON log event of `process` (logging to `path`) whose message is `message`."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == message:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no log event {message!r} in {path}")


def start_logged(args, log_path):
    """Starts the binary with its JSON log going to a file: a pipe nobody drains would stall it once full."""
    with open(log_path, "w") as log:
        return subprocess.Popen([BINARY, *args, "--log-format", "json"], stderr=log)


def start_server(data, subject):
    """`fluxplane serve` on the embedded store in `data`, and an Owner token for `subject`."""
    process = start_logged(["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)], data / "server.log")
    address = wait_for_log(data / "server.log", "fluxplane listening", process)["address"]
    token = subprocess.run(
        [BINARY, "token", "--data-dir", str(data), "--subject", subject, "--role", "Owner", "--scope", "/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return process, {"base_url": f"http://{address}", "token": token}


def stop(process):
    process.terminate()
    process.wait(timeout=10)
    assert process.returncode == 0, "stopped cleanly on SIGTERM"
