"""Security defaults.

* nothing is unpickled, from disk or S3 (the code is scanned for every way to do it);
* secrets come from the environment or `.env` only and never show up in a log line, an
  answer or an error message - the services run at DEBUG level with the API key from a
  `.env` file and AWS keys in the environment, get every kind of request, and an upload
  to an unreachable S3 fails; then everything they printed is searched for the secrets;
* the services bind to 127.0.0.1 unless told otherwise;
* every request parameter is bounded (ids, `k`, batch sizes, body size), so that one
  request cannot exhaust memory;
* with `MUSICREC_EVENTS_API_KEY` set, `/add_event` without the right key is a 401 and
  stores nothing (`tests/services/test_service_events.py` checks this in-process; here
  through a real process, with the key read from `.env`, and every way to get it wrong).
"""

from __future__ import annotations

import ast
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr
from services.conftest import make_settings

from musicrec.serve import PROJECT_ROOT, uvicorn_command
from musicrec.settings import Settings

from .conftest import Report
from .procs import ServiceSet

API_KEY = "k3y-from-dotenv-7b1f0c2e"
AWS_KEY_ID = "AKIAEXAMPLE4N5Q6R7S8"
AWS_SECRET = "wJalrXUtnFEMI-example-secret-0f9e8d7c"

#: modules and calls that unpickle (or may): none of them may appear in the package
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
PICKLE_CALLS = {"read_pickle", "unsafe_load", "load_pickle", "full_load"}
#: yaml loaders that build arbitrary Python objects (a loader of ours must extend SafeLoader)
UNSAFE_YAML_LOADERS = {
    "Loader",
    "UnsafeLoader",
    "FullLoader",
    "CLoader",
    "CUnsafeLoader",
    "CFullLoader",
}


def python_sources() -> list[Path]:
    files = sorted((PROJECT_ROOT / "musicrec").glob("*.py"))
    files += [PROJECT_ROOT / f for f in ("api_main.py", "event_storage.py", "similarity_store.py")]
    return files


def unpickling_sites(path: Path) -> list[str]:
    """Every import of a pickling module and every call that can unpickle, in one file."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ClassDef):  # a loader of our own must build on SafeLoader
            bases = [b.attr for b in node.bases if isinstance(b, ast.Attribute)]
            found += [f"{where} a subclass of yaml.{b}" for b in bases if b in UNSAFE_YAML_LOADERS]
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name in PICKLE_MODULES]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES
        ):
            found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            base = getattr(getattr(func, "value", None), "id", "")
            kwargs = {k.arg: k.value for k in node.keywords}
            if name in PICKLE_CALLS:
                found.append(f"{where} {name}()")
            if "allow_pickle" in kwargs and not (
                isinstance(kwargs["allow_pickle"], ast.Constant)
                and kwargs["allow_pickle"].value is False
            ):
                found.append(f"{where} allow_pickle not False")
            if name == "load" and base in ("np", "numpy") and "allow_pickle" not in kwargs:
                found.append(f"{where} np.load() without allow_pickle=False")
            if name == "load" and base == "yaml":
                found.append(f"{where} yaml.load() (use yaml.safe_load)")
            if name == "load" and base == "torch":
                found.append(f"{where} torch.load()")
    return found


def test_nothing_is_unpickled(report: Report) -> None:
    sites = [s for f in python_sources() for s in unpickling_sites(f)]
    report.add("security", cases=1, failures=int(bool(sites)))
    assert not sites, sites


def test_the_scan_would_see_unpickling(tmp_path: Path) -> None:
    """The scan itself: each way to unpickle is recognised."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport yaml\nimport pandas as pd\n"
        "np.load('a.npy')\nnp.load('b.npy', allow_pickle=True)\nyaml.load(s)\n"
        "pd.read_pickle('c')\nfrom joblib import load\n"
        "class L(yaml.FullLoader): pass\nclass S(yaml.SafeLoader): pass\n"
    )
    assert len(unpickling_sites(bad)) == 7  # the SafeLoader subclass is not one


@pytest.fixture
def dotenv_services(
    services: ServiceSet, fake_artifacts: dict[str, Any], tmp_path: Path
) -> ServiceSet:
    """The three services at DEBUG level: the events API key comes from `.env` in their
    working directory, the AWS keys from the environment."""
    work = tmp_path / "cwd"
    work.mkdir()
    (work / ".env").write_text(f"MUSICREC_EVENTS_API_KEY={API_KEY}\n")
    cfg = make_settings(
        fake_artifacts["root"],
        tmp_path,
        log_level="DEBUG",
        events_api_key=None,  # not in the environment: only in .env
        aws_access_key_id=SecretStr(AWS_KEY_ID),
        aws_secret_access_key=SecretStr(AWS_SECRET),
    )
    services.start(cfg, cwd=work)
    return services


def event_rows(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def test_api_key_from_dotenv_guards_add_event_and_never_leaks(
    dotenv_services: ServiceSet, fake_artifacts: dict[str, Any], tmp_path: Path, report: Report
) -> None:
    s = dotenv_services
    ev, rec, sim = s.url("events"), s.url("recommendations"), s.url("similar")
    params = {"user_id": 77, "track_id": 5}
    wrong: list[dict[str, Any]] = [
        {},  # no key
        {"headers": {"X-API-Key": ""}},
        {"headers": {"X-API-Key": "wrong"}},
        {"headers": {"X-API-Key": API_KEY.upper()}},
        {"headers": {"X-API-Key": API_KEY + "x"}},
        {"headers": {"X-API-Key": API_KEY[:-1]}},
        {"headers": {"Authorization": f"Bearer {API_KEY}"}},
        {"headers": {"Cookie": f"X-API-Key={API_KEY}"}},
        {"params": {**params, "X-API-Key": "x", "api_key": "x"}},
    ]
    answers: list[httpx.Response] = []
    with httpx.Client(timeout=10) as c:
        key = {"X-API-Key": API_KEY}
        assert c.get(f"{ev}/stats").status_code == 401  # reads need the key too
        stored_before = c.get(f"{ev}/stats", headers=key).json()["events"]
        for how in wrong:
            kwargs = {"params": params, **how}
            answers.append(r := c.post(f"{ev}/add_event", **kwargs))
            assert r.status_code == 401, (how, r.text)
            assert r.json()["detail"] == "missing or invalid X-API-Key header"
        stored_after = c.get(f"{ev}/stats", headers=key).json()["events"]
        ok = c.post(f"{ev}/add_event", params=params, headers={"X-API-Key": API_KEY})
        # a bit of everything else, for the logs
        answers += [
            ok,
            c.post(f"{ev}/get_events", params={"user_id": 77}),
            c.post(f"{rec}/recommendations", params={"user_id": 77, "k": 5}),
            c.post(f"{rec}/recommendations", params={"user_id": -1}),
            c.post(f"{sim}/similar_tracks_batch", json={"track_ids": ["x"]}),
            c.get(f"{sim}/metrics"),
            c.get(f"{ev}/openapi.json"),
        ]
    db = s.settings["events"].event_db_path
    rows = event_rows(db)
    s.stop_all()  # flush and close every log
    text = s.log_text() + "".join(r.text for r in answers)
    leaks = [name for name, secret in secrets().items() if secret in text]
    report.add(
        "security",
        cases=len(wrong) + 1,
        failures=len(leaks) + int(stored_after != stored_before) + int(ok.status_code != 200),
    )
    assert stored_after == stored_before, "a refused request stored an event"
    assert ok.status_code == 200 and rows == stored_before + 1
    assert "DEBUG" in text  # the grep did read DEBUG-level logs
    assert not leaks, f"secrets found in logs or answers: {leaks}"


def secrets() -> dict[str, str]:
    return {"events API key": API_KEY, "AWS key id": AWS_KEY_ID, "AWS secret": AWS_SECRET}


def test_s3_failure_does_not_print_secrets(tmp_path: Path, report: Report) -> None:
    """An upload to an unreachable endpoint fails with a message naming bucket and
    endpoint, at DEBUG level, and no secret in any output."""
    art = tmp_path / "recsys"
    (art / "data").mkdir(parents=True)
    (art / "data" / "items.parquet").write_bytes(b"x")
    with socketless_port() as port:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MUSICREC_", "AWS_", "S3_"))
        }
        env.update(
            PYTHONPATH=str(PROJECT_ROOT),
            MUSICREC_LOG_LEVEL="DEBUG",
            MUSICREC_LOG_FILE=str(tmp_path / "log.txt"),
            S3_BUCKET_NAME="reliability-bucket",
            S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID=AWS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        )
        run = subprocess.run(
            [sys.executable, "-m", "musicrec", "upload", "--artifacts-dir", str(art)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    text = run.stdout + run.stderr + (tmp_path / "log.txt").read_text()
    leaks = [name for name, secret in secrets().items() if secret in text]
    report.add("security", cases=1, failures=len(leaks) + int(run.returncode != 2))
    assert run.returncode == 2, text[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "reliability-bucket" in errors[0], run.stderr[-2000:]
    assert not leaks, leaks


class socketless_port:  # noqa: N801 - used as a context manager
    """A 127.0.0.1 port nobody listens on (bound while in use, so nobody else takes it)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_settings_never_show_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n")
    monkeypatch.setenv("MUSICREC_EVENTS_API_KEY", API_KEY)
    s = Settings()
    assert s.aws_secret_access_key is not None
    assert s.aws_secret_access_key.get_secret_value() == AWS_SECRET  # read from .env
    shown = repr(s) + str(s) + s.model_dump_json() + str(s.model_dump())
    assert AWS_SECRET not in shown and API_KEY not in shown


def test_services_bind_to_localhost_unless_told_otherwise(
    stack: ServiceSet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, report: Report
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for key in list(os.environ):
        if key.startswith("MUSICREC_"):
            monkeypatch.delenv(key)
    default = Settings()
    assert default.host == "127.0.0.1"
    from musicrec.serve import SERVICES

    cmd = uvicorn_command(SERVICES[0], default, default.similar_port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    told = Settings(host="0.0.0.0")
    cmd = uvicorn_command(SERVICES[0], told, told.similar_port)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    # the running services listen on the loopback interface only
    listening = []
    for name in ("recommendations", "similar", "events"):
        conns = psutil.Process(stack.pid(name)).net_connections(kind="inet")
        listening += [(name, c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN]
    report.add("security", cases=1, failures=sum(1 for _, ip in listening if ip != "127.0.0.1"))
    assert listening and all(ip == "127.0.0.1" for _, ip in listening), listening


def test_every_request_parameter_is_bounded(stack: ServiceSet, report: Report) -> None:
    """Read from each service's OpenAPI: every integer has a maximum, every list a
    `maxItems`; the batch body is size-limited; a huge query string is refused."""
    unbounded = []
    for name in ("recommendations", "similar", "events"):
        schema = httpx.get(f"{stack.url(name)}/openapi.json").json()
        components: dict[str, Any] = schema.get("components", {}).get("schemas", {})

        def walk(node: Any, where: str, components: dict[str, Any] = components) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    walk(components[node["$ref"].rsplit("/", 1)[1]], where)
                    return
                if node.get("type") == "integer" and "maximum" not in node:
                    unbounded.append(f"{where}: integer without maximum")
                if node.get("type") == "array" and "maxItems" not in node:
                    unbounded.append(f"{where}: array without maxItems")
                for key in ("items", "anyOf", "oneOf", "allOf"):
                    if key in node:
                        walk(node[key], where)
                for prop, sub in node.get("properties", {}).items():
                    walk(sub, f"{where}.{prop}")
            elif isinstance(node, list):
                for sub in node:
                    walk(sub, where)

        for path, methods in schema["paths"].items():
            for method, op in methods.items():
                for p in op.get("parameters", []):
                    walk(p["schema"], f"{name} {method.upper()} {path} {p['name']}")
                body = op.get("requestBody", {}).get("content", {})
                for media in body.values():
                    walk(media["schema"], f"{name} {method.upper()} {path} body")
    sim = stack.url("similar")
    big_body = b'{"track_ids": [' + b"1," * 40_000 + b"1]}"  # ~80 kB
    too_big = httpx.post(
        f"{sim}/similar_tracks_batch",
        content=big_body,
        headers={"Content-Type": "application/json"},
    )
    long_query = raw_status(sim, "POST", "/similar_tracks?track_id=" + "1" * 100_000)
    alive = httpx.get(f"{sim}/health").status_code == 200
    report.add(
        "security",
        cases=2,
        failures=len(unbounded) + int(too_big.status_code != 413) + int(not alive),
    )
    assert not unbounded, unbounded
    assert too_big.status_code == 413
    assert long_query is None or 400 <= long_query < 500, long_query  # None: connection closed
    assert alive


def raw_status(base_url: str, method: str, target: str) -> int | None:
    """Status of a raw HTTP/1.1 request (clients refuse to send some), None if the server
    just closed the connection."""
    import socket

    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        try:
            sock.sendall(request.encode())
            head = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return None
    if not head:
        return None
    return int(head.split(b" ", 2)[1])
