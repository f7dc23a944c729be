"""Schema-driven fuzzing of the real fluxplane binary with schemathesis, on the embedded store and on PostgreSQL.

For each backend: a fresh server (`serve --listen 127.0.0.1:0 --log-format json`, and with PostgreSQL a database
made for the run), an Owner token, a few seeded resources (a cluster registered by `fluxplane agent register`
whose agent has reported, a cluster without an agent, configurations, cluster groups and policy assignments),
then schemathesis against the server's own /openapi.json for a fixed time, with the checks:

- not_a_server_error: no 5xx, ever;
- response_schema_conformance: every answer matches the schema documented for its status;
- status_code_conformance and content_type_conformance: every status and content type is documented (every
  operation documents a `default` error response, so the status check only fails on an undocumented one where
  there is no default).

It also fails when the server dies, logs an ERROR or does not stop cleanly on SIGTERM. On failure it prints each
failing request as a curl command, keeps the data directory (server log, schemathesis report) and exits 1.

    python tests/fuzz/run.py [--backend sqlite|postgres|all] [--seconds N] [--seed N] [--serve]

`--serve` starts and seeds a server the same way and waits (Ctrl-C stops it), to replay the curl commands.
PostgreSQL: FLUXPLANE_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres) names a server where
the run may create and drop databases. FLUXPLANE_BIN names the binary (default target/debug/fluxplane),
FLUXPLANE_FUZZ_HOOKS another hooks module (one that imports `hooks` and adds its own, to explore).
"""

import argparse
import base64
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import seed  # noqa: E402

BINARY = os.environ.get("FLUXPLANE_BIN", str(ROOT / "target" / "debug" / "fluxplane"))
POSTGRES_URL = os.environ.get("FLUXPLANE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
# Excluded: the live event streams (server-sent events) answer 200 and then stream until the client goes away, by
# design, so every positive request would hang until the request timeout. (The agent's long-poll is kept: the
# hooks cut its `wait` to a second.)
EXCLUDE_PATH_REGEX = r"/providers/Fluxplane\.Fleet/events$"


def log(message):
    print(f"[fuzz] {message}", flush=True)


def wait_for_log(path, message, process, timeout=60):
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
    raise RuntimeError(f"no log event {message!r} in {path} (server exit code {process.poll()})")


def psql(url, sql):
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True, capture_output=True, text=True)


def with_database(url, name):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class Server:
    """One fluxplane serve on one backend, with its data directory and (PostgreSQL) its database."""

    def __init__(self, backend, data):
        self.backend = backend
        self.data = data
        self.database = None
        self.process = None
        self.log_path = data / "server.log"

    def start(self):
        args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data), "--log-format", "json"]
        if self.backend == "postgres":
            self.database = f"fluxplane_fuzz_{os.getpid()}_{int(time.time())}"
            psql(POSTGRES_URL, f"create database {self.database}")
            # with --database-url the keys must be given (the user tokens' key, where `token` finds it too, and the key
            # that seals alert receivers' credentials, read from its default path)
            for key in ("jwt-secret", "secrets-key"):
                subprocess.run([BINARY, "keygen", str(self.data / key)], check=True, capture_output=True)
            args += [
                "--database-url", with_database(POSTGRES_URL, self.database),
                "--jwt-secret-file", str(self.data / "jwt-secret"),
            ]
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen([BINARY, *args], stderr=log_file, stdout=subprocess.DEVNULL)
        address = wait_for_log(self.log_path, "fluxplane listening", self.process)["address"]
        self.base_url = f"http://{address}"
        self.token = subprocess.run(
            [BINARY, "token", "--data-dir", str(self.data), "--subject", "fuzz", "--role", "Owner", "--scope", "/",
             "--ttl", "2h"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def stop(self):
        """Stops the server; answers a problem, or None when it stopped cleanly."""
        problem = None
        if self.process is not None:
            if self.process.poll() is not None:
                problem = f"the server died during the run (exit code {self.process.returncode})"
            else:
                self.process.send_signal(signal.SIGTERM)
                try:
                    code = self.process.wait(timeout=20)
                    if code != 0:
                        problem = f"the server exited with {code} on SIGTERM"
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    problem = "the server did not stop within 20 s of SIGTERM"
        if self.database:
            try:
                psql(POSTGRES_URL, f"drop database if exists {self.database} with (force)")
            except subprocess.CalledProcessError as error:
                log(f"could not drop the database {self.database}: {error.stderr.strip()}")
        return problem

    def error_events(self):
        """The server's ERROR log events (a 5xx is logged with its cause) and panics."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                if "panicked" in line:
                    events.append({"message": line})
                continue
            if event.get("level") == "ERROR":
                events.append(event)
        return events


def seeded_fleet(server):
    identity = server.data / "agent.json"
    seed.register_agent(BINARY, server.base_url, server.token, identity)
    fleet = seed.Fleet(server.base_url, server.token, identity)
    fleet.seed()
    return fleet


def decoded(content):
    """A body as the ndjson report records it: {"$base64": ...} or {"string": ...}, or None."""
    if not content:
        return None
    if "$base64" in content:
        return base64.b64decode(content["$base64"]).decode("utf-8", errors="replace")
    return content.get("string")


def curl(request, base_url):
    """The request as a curl command for a server started by `run.py --serve`, which exports API and TOKEN."""
    url = request["uri"]
    agent = urllib.parse.urlsplit(url).path.startswith("/agent/")
    if url.startswith(base_url):
        url = "${API}" + url[len(base_url):]
    token = "$AGENT_TOKEN" if agent else "$TOKEN"
    parts = ["curl -sS -i -X", request["method"], '"' + url.replace('"', '\\"') + '"',
             "-H", f'"Authorization: Bearer {token}"']
    for name, values in (request.get("headers") or {}).items():
        if name.lower() in ("authorization", "user-agent", "accept-encoding", "accept", "connection",
                            "content-length") or name.lower().startswith("x-schemathesis"):
            continue
        for value in values:
            parts += ["-H", shlex.quote(f"{name}: {value}")]
    body = decoded(request.get("body"))
    if body is not None:
        parts += ["--data-binary", shlex.quote(body)]
    return " ".join(parts)


def failures(events_path):
    """The distinct failed checks of a run (by operation, check and the first line of their message), each with
    its first example and how often it occurred."""
    distinct = {}
    if not events_path.exists():
        return []
    with open(events_path) as events:
        for line in events:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if not finished or not finished.get("recorder"):
                continue
            recorder = finished["recorder"]
            for case_id, checks in (recorder.get("checks") or {}).items():
                for check in checks:
                    if check.get("status") != "failure":
                        continue
                    failure = (check.get("failure_info") or {}).get("failure") or {}
                    case = ((recorder.get("cases") or {}).get(case_id) or {}).get("value") or {}
                    operation = failure.get("operation") or f"{case.get('method')} {case.get('path')}"
                    message = (failure.get("message") or "").strip()
                    key = (operation, check["name"], failure.get("title"), message.splitlines()[0] if message else "")
                    if key in distinct:
                        distinct[key]["count"] += 1
                        continue
                    distinct[key] = {
                        "operation": operation,
                        "check": check["name"],
                        "title": failure.get("title", ""),
                        "message": message,
                        "interaction": (recorder.get("interactions") or {}).get(case_id),
                        "count": 1,
                    }
    return list(distinct.values())


def summarize(found, base_url):
    print(f"\n{'=' * 30} {len(found)} distinct failure(s) {'=' * 30}")
    for index, failure in enumerate(found, 1):
        print(f"\n--- {index}. {failure['operation']}: {failure['check']} ({failure['title']}), "
              f"seen {failure['count']} time(s)")
        message = failure["message"].splitlines()
        print("\n".join(f"    {line}" for line in message[:12]) + ("\n    ..." if len(message) > 12 else ""))
        interaction = failure["interaction"]
        if interaction:
            response = interaction.get("response") or {}
            body = decoded(response.get("content")) or ""
            print(f"  answer: {response.get('status_code')} {body[:600]}")
            print(f"  replay: {curl(interaction['request'], base_url)}")


def run_schemathesis(server, fleet, seconds, random_seed, report_dir):
    state_path = server.data / "fuzz-state.json"
    state_path.write_text(json.dumps(fleet.state()))
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS=os.environ.get("FLUXPLANE_FUZZ_HOOKS", "hooks"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        FLUXPLANE_FUZZ_STATE=str(state_path),
        FLUXPLANE_FUZZ_RESEED_LOG=str(server.data / "reseed.log"),
    )
    st = pathlib.Path(sys.executable).parent / "st"
    command = [
        str(st), "run", f"{server.base_url}/openapi.json",
        "--checks", CHECKS,
        "--exclude-path-regex", EXCLUDE_PATH_REGEX,
        "--max-time", str(seconds),
        # one worker: with two, hypothesis describes strategies' lambdas by parsing their source in both threads at
        # once, and CPython 3.11's parser is not thread-safe there ("AST constructor recursion depth mismatch", a
        # schemathesis error that failed a CI run with no server failure in it)
        "--workers", "1",
        "--request-timeout", "20",
        # tokens are the hooks' business: negative cases spend nothing on mangling the Authorization header,
        # which tests/e2e/auth.rs covers
        "--generation-with-security-parameters", "false",
        # generation-quality checks, not the server's: the operation status path (seven path parameters, steered by
        # the hooks) trips filter_too_much now and then, and a busy two-core machine too_slow
        "--suppress-health-check", "filter_too_much,too_slow",
        "--generation-database", "none",
        "--report", "json,ndjson",
        "--report-dir", str(report_dir),
        "--report-json-path", str(report_dir / "report.json"),
        "--report-ndjson-path", str(report_dir / "events.ndjson"),
        "--no-color",
    ]
    if random_seed is not None:
        command += ["--seed", str(random_seed)]
    log(f"schemathesis for {seconds} s against {server.base_url} ({server.backend})")
    completed = subprocess.run(command, env=env, cwd=server.data)
    report_path = report_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return completed.returncode, report


def fuzz(backend, seconds, random_seed, keep):
    data = pathlib.Path(tempfile.mkdtemp(prefix=f"fluxplane-fuzz-{backend}-"))
    server = Server(backend, data)
    problems = []
    started = time.time()
    try:
        server.start()
        fleet = seeded_fleet(server)
        code, report = run_schemathesis(server, fleet, seconds, random_seed, data / "report")
        found = failures(data / "report" / "events.ndjson")
        if found:
            summarize(found, server.base_url)
            problems.append(f"{len(found)} distinct failure(s), listed above with a curl command each (replay them "
                            f"against `python {pathlib.Path(__file__).relative_to(ROOT)} --serve --backend {backend}`)")
        if report is None:
            problems.append(f"schemathesis wrote no report (exit code {code})")
        elif code != 0:
            errors = ", ".join(f"{e.get('title')} ({e.get('count')})" for e in report.get("errors", []))
            problems.append(f"schemathesis exited with {code}" + (f"; errors (in its output): {errors}" * bool(errors)))
    finally:
        problem = server.stop()
        if problem:
            problems.append(problem)
    errors = server.error_events()
    if errors:
        problems.append(f"{len(errors)} ERROR event(s) in the server log, the first ones:")
        problems += [f"  {json.dumps(event)[:1000]}" for event in errors[:10]]
    took = time.time() - started
    if problems:
        log(f"{backend}: FAILED in {took:.0f} s; the server log and the report are in {data}")
        for problem in problems:
            print(f"  {problem}")
        return False
    log(f"{backend}: no failure in {took:.0f} s")
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return True


def serve(backend):
    data = pathlib.Path(tempfile.mkdtemp(prefix=f"fluxplane-fuzz-{backend}-"))
    server = Server(backend, data)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server on SIGTERM as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even started in the background of a script
    try:
        server.start()
        fleet = seeded_fleet(server)
        print(f"export API={server.base_url}")
        print(f"export TOKEN={server.token}")
        print(f"export AGENT_TOKEN={fleet.agent_token()}   # valid 120 s: python {HERE}/run.py --agent-token {data}")
        print(f"# data directory (server.log): {data}; Ctrl-C stops the server", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FLUXPLANE_FUZZ_SECONDS", "90")),
                        help="schemathesis time budget per backend (default 90, or FLUXPLANE_FUZZ_SECONDS)")
    parser.add_argument("--seed", type=int, default=os.environ.get("FLUXPLANE_FUZZ_SEED"))
    parser.add_argument("--keep", action="store_true", help="keep the data directories of passing runs too")
    parser.add_argument("--serve", action="store_true", help="start and seed a server, print API and TOKEN, wait")
    parser.add_argument("--agent-token", metavar="DATA_DIR", help="print a fresh token of the seeded agent")
    args = parser.parse_args()
    if args.agent_token:
        print(seed.Fleet("", "", pathlib.Path(args.agent_token) / "agent.json").agent_token())
        return 0
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    if args.serve:
        serve(backends[0])
        return 0
    results = [fuzz(backend, args.seconds, args.seed, args.keep) for backend in backends]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
