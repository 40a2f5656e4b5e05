"""A Halyard cluster over its HTTP API (the same keys and roles as the CLI and the console).

Everything here is one HTTP call to a scheduler (or any node for predictions), made with
the standard library; an answer other than 2xx raises :class:`HalyardError` with the
server's message, which says what was wrong and what to do.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import spec as _spec

#: Where a client connects when neither the argument nor ``HALYARD_SCHEDULER`` says.
DEFAULT_ADDRESS = "127.0.0.1:7070"
#: The admin key file a standalone cluster writes in its data directory.
ADMIN_KEY_FILE = "admin.key"
#: Job states that do not change any more.
FINISHED = ("succeeded", "failed", "cancelled")

Records = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], Any]


class HalyardError(Exception):
    """A call the cluster refused or could not answer: ``status`` is the HTTP status (0
    when the cluster could not be reached) and ``message`` the server's explanation."""

    def __init__(self, status: int, message: str, url: str = "") -> None:
        self.status = status
        self.message = message
        self.url = url
        super().__init__(f"{status}: {message}" if status else message)


class JobFailed(HalyardError):
    """A followed job ended failed or cancelled; ``job`` is its last state."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        self.job = dict(job)
        why = job.get("error") or job.get("state")
        super().__init__(0, f"job {job.get('id')} ({job.get('name')}) {job.get('state')}: {why}")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _discover_key(host: str) -> Optional[str]:
    """The key the CLI would send: ``HALYARD_KEY``, else for a cluster on this machine
    ``HALYARD_KEY_FILE`` or the standalone's ``admin.key`` (``HALYARD_DATA_DIR``, else
    ``halyard-data/``)."""
    key = os.environ.get("HALYARD_KEY", "").strip()
    if key:
        return key
    if not _is_loopback(host):
        return None
    files = []
    if os.environ.get("HALYARD_KEY_FILE"):
        files.append(os.environ["HALYARD_KEY_FILE"])
    files.append(os.path.join(os.environ.get("HALYARD_DATA_DIR", "halyard-data"), ADMIN_KEY_FILE))
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            continue
    return None


def _records_of(records: Records) -> Tuple[List[Dict[str, Any]], bool]:
    """Records as a list of dicts, and whether they came as a pandas DataFrame."""
    if hasattr(records, "to_dict") and hasattr(records, "columns"):
        rows = json.loads(records.to_json(orient="records", date_format="iso"))
        return rows, True
    if isinstance(records, Mapping):
        return [dict(records)], False
    return [dict(r) for r in records], False


class Client:
    """A connection to a Halyard cluster.

    ``address``: ``host:port`` or a URL (default ``HALYARD_SCHEDULER``, else
    ``127.0.0.1:7070``). ``key``: an API key (default ``HALYARD_KEY``; for a cluster on
    this machine, the key file a standalone cluster wrote). ``tls_ca``: a PEM file to
    trust for a cluster serving TLS (default ``HALYARD_TLS_CA``; setting it makes the
    address ``https``).
    """

    def __init__(
        self,
        address: Optional[str] = None,
        key: Optional[str] = None,
        *,
        tls_ca: Optional[str] = None,
        timeout: float = 60.0,
    ) -> None:
        address = address or os.environ.get("HALYARD_SCHEDULER") or DEFAULT_ADDRESS
        tls_ca = tls_ca or os.environ.get("HALYARD_TLS_CA") or None
        if "://" not in address:
            address = ("https://" if tls_ca else "http://") + address
        self.url = address.rstrip("/")
        host = urllib.parse.urlsplit(self.url).hostname or ""
        self.key = key or _discover_key(host)
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=tls_ca) if tls_ca else None

    def __repr__(self) -> str:
        return f"halyard.Client({self.url!r}, key={'set' if self.key else 'none'})"

    # ---- HTTP ------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, body: Any = None, *, raw: Optional[str] = None, text: bool = False
    ) -> Any:
        url = self.url + path
        headers = {"accept": "application/json"}
        data = None
        if raw is not None:
            data = raw.encode("utf-8")
            headers["content-type"] = "application/toml"
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["content-type"] = "application/json"
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as r:
                answer = r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            answer = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(answer).get("error", answer)
            except (ValueError, AttributeError):
                message = answer.strip() or e.reason
            raise HalyardError(e.code, str(message), url) from None
        except urllib.error.URLError as e:
            raise HalyardError(
                0,
                f"cannot reach the cluster at {self.url} ({e.reason}): is it running? "
                "(the address comes from the argument, else HALYARD_SCHEDULER)",
                url,
            ) from None
        if text:
            return answer
        return json.loads(answer) if answer.strip() else None

    @staticmethod
    def _name(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # ---- jobs ------------------------------------------------------------------------

    def cluster(self) -> Dict[str, Any]:
        """The leader, the executors (slots, tasks, memory, GPUs) and the SQL endpoint."""
        return self._call("GET", "/v1/cluster")

    def submit(self, spec: Union[str, os.PathLike, Mapping[str, Any]], *, base: Optional[str] = None) -> Dict[str, Any]:
        """Submit a job spec: a file (a ``pathlib.Path``, or a path ending in ``.toml``), TOML
        text, or a dict. Relative data paths are read
        from the spec file's folder (TOML text and dicts: ``base``, default the current
        folder), as ``halyard submit`` does. Returns the job (``id``, ``state``, …)."""
        if isinstance(spec, Mapping):
            value, folder = dict(spec), base or os.getcwd()
        elif isinstance(spec, os.PathLike) or "\n" not in spec and spec.strip().endswith(".toml"):
            path = os.fspath(spec)
            try:
                with open(path, encoding="utf-8") as fh:
                    value = _spec.loads(fh.read())
            except OSError as e:
                raise HalyardError(0, f"{path}: cannot read the spec file ({e.strerror})") from None
            folder = base or os.path.dirname(os.path.abspath(path))
        else:
            try:
                value = _spec.loads(spec)
            except ValueError as e:
                raise HalyardError(0, f"the spec is not TOML: {e}") from None
            folder = base or os.getcwd()
        return self._call("POST", "/v1/jobs", raw=_spec.dumps(_spec.resolve_paths(value, folder)))

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job, newest first as the cluster lists them."""
        return self._call("GET", "/v1/jobs")["jobs"]

    def job(self, job_id: str) -> Dict[str, Any]:
        """One job: state, attempt, epoch, loss, metrics, artifact, error, …"""
        return self._call("GET", f"/v1/jobs/{self._name(job_id)}")

    def events(self, job_id: str) -> List[Dict[str, Any]]:
        """The job's events and log lines, oldest first (``time_ms``, ``source``, ``message``)."""
        return self._call("GET", f"/v1/jobs/{self._name(job_id)}/events")["events"]

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel a job (a submitter's key: its own jobs only)."""
        return self._call("POST", f"/v1/jobs/{self._name(job_id)}/cancel")

    def follow(
        self,
        job_id: str,
        *,
        progress: bool = True,
        interval: float = 0.5,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Wait for a job to finish, with a progress bar of its epochs (tqdm's, in a
        terminal or Jupyter, when installed; else a line on stderr). Returns the finished
        job; raises :class:`JobFailed` when it failed or was cancelled."""
        bar = _Progress(job_id) if progress else None
        started = time.monotonic()
        try:
            while True:
                job = self.job(job_id)
                if bar:
                    bar.update(job)
                if job.get("state") in FINISHED:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    raise HalyardError(0, f"job {job_id} still {job.get('state')} after {timeout} s")
                time.sleep(interval)
        finally:
            if bar:
                bar.close()
        if job.get("state") != "succeeded":
            raise JobFailed(job)
        return job

    # ---- models ----------------------------------------------------------------------

    def models(self) -> Any:
        """Deployed models with their split, aliases and serving executors."""
        return self._call("GET", "/v1/models")

    def model(self, name: str) -> Dict[str, Any]:
        """A registered model: its versions (newest first) with metrics and lineage, and its
        deployment."""
        return self._call("GET", f"/v1/models/{self._name(name)}/versions")

    def report(self, target: str, path: Union[str, "os.PathLike[str]", None] = None) -> str:
        """Write a version's report (`halyard report`): ROC, precision-recall, calibration,
        gains and lift, training curves and metrics for a response model; the Qini curve for
        an uplift model; forecasts against actuals for a forecaster. One self-contained HTML
        file (inline SVG, no script) that opens offline.

        `target` is `NAME@VERSION` or `NAME` (its newest version); `path` defaults to
        `NAME-vVERSION.html` (`NAME.html` without a version) in the working folder. Returns
        the path written."""
        name, _, version = target.partition("@")
        query = f"?version={urllib.parse.quote(version)}" if version else ""
        html = self._call("GET", f"/models/{self._name(name)}/report{query}", text=True)
        if path is None:
            path = f"{name}-v{version}.html" if version else f"{name}.html"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(html)
        return os.fspath(path)

    def schema(self, name: str) -> Dict[str, Any]:
        """A deployed model's input schema (fields, types, known categories) and variants."""
        return self._call("GET", f"/v1/models/{self._name(name)}")

    def _deploy(self, name: str, body: Dict[str, Any], wait: float) -> Dict[str, Any]:
        answer = self._call("POST", f"/v1/models/{self._name(name)}/deploy", body)
        # Executors load a new deployment within moments: until one has, a prediction is
        # answered 503 ("retry shortly"). Wait for that to pass, at most `wait` seconds.
        deadline = time.monotonic() + wait
        while body["action"] != "undeploy":
            try:
                self.schema(name)
                break
            except HalyardError as e:
                if e.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return answer

    def deploy(
        self, name: str, version: int, *, percent: Optional[int] = None, wait: float = 30.0
    ) -> Dict[str, Any]:
        """Send all traffic to ``version``; with ``percent``, start it as a canary with that
        share beside production instead. Returns the model with its new deployment once an
        executor serves it (waiting up to ``wait`` seconds)."""
        if percent is None:
            return self._deploy(name, {"action": "deploy", "version": int(version)}, wait)
        body = {"action": "canary", "version": int(version), "percent": int(percent)}
        return self._deploy(name, body, wait)

    def promote(self, name: str, *, wait: float = 30.0) -> Dict[str, Any]:
        """Make the canary production."""
        return self._deploy(name, {"action": "promote"}, wait)

    def rollback(self, name: str, *, wait: float = 30.0) -> Dict[str, Any]:
        """Go back to the deployment before the last change."""
        return self._deploy(name, {"action": "rollback"}, wait)

    def undeploy(self, name: str) -> Dict[str, Any]:
        """Stop serving the model."""
        return self._deploy(name, {"action": "undeploy"}, 0.0)

    # ---- predictions -----------------------------------------------------------------

    def predict(
        self,
        name: str,
        records: Records,
        *,
        key: Optional[str] = None,
        key_field: Optional[str] = None,
    ) -> Any:
        """Score records: a dict, a list of dicts, or a pandas DataFrame (dates as ISO
        text). Returns a list of ``{"score", "version"}``, or for a DataFrame a DataFrame
        with ``score`` and ``version`` columns on the same index. ``key`` (a customer id)
        picks the variant of a split; ``key_field`` names each record's own key."""
        rows, frame = _records_of(records)
        body: Dict[str, Any] = {"records": rows}
        if key is not None:
            body["key"] = key
        if key_field is not None:
            body["key_field"] = key_field
        answer = self._call("POST", f"/v1/models/{self._name(name)}:predict", body)
        predictions = answer["predictions"]
        if frame:
            import pandas as pd

            return pd.DataFrame(predictions, index=records.index)
        return predictions

    def forecast(self, name: str, series: Iterable[Mapping[str, Any]], horizon: int) -> List[Dict[str, Any]]:
        """Forecast ``horizon`` steps of each series (``{"id", "values"[, "covariates"]}``)."""
        body = {"series": [dict(s) for s in series], "horizon": int(horizon)}
        return self._call("POST", f"/v1/models/{self._name(name)}:forecast", body)["forecasts"]

    def feedback(self, name: str, outcomes: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
        """Record outcomes: ``{"version" or "key", "converted": bool}`` or ``{…, "metric",
        "value"}``, one or a list of up to 10,000. Answered once on the node's disk."""
        body = dict(outcomes) if isinstance(outcomes, Mapping) else [dict(o) for o in outcomes]
        return self._call("POST", f"/v1/models/{self._name(name)}:feedback", body)

    # ---- experiments and monitoring --------------------------------------------------

    def experiment(self, name: str) -> Dict[str, Any]:
        """The experiment report of a model's split (conversion per variant, intervals,
        always-valid p-values, the sample-ratio check, metrics)."""
        return self._call("GET", f"/v1/experiments/{self._name(name)}")

    def experiment_frame(self, name: str) -> Any:
        """The report's variants as a pandas DataFrame, one row per version."""
        import pandas as pd

        report = self.experiment(name)
        rows = [{k: v for k, v in variant.items() if not isinstance(v, (dict, list))} for variant in report.get("variants", [])]
        return pd.DataFrame(rows)

    def drift(self, name: str) -> Dict[str, Any]:
        """The input drift report of a deployed model."""
        return self._call("GET", f"/v1/drift/{self._name(name)}")


class _Progress:
    """A job's epochs as a progress bar: tqdm's when installed, else one line on stderr."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.bar = None
        self.shown = -1
        try:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
        except ImportError:
            self._tqdm = None

    def update(self, job: Mapping[str, Any]) -> None:
        total = int(job.get("epochs") or 0)
        epoch = int(job.get("epoch") or 0)
        loss = job.get("loss")
        state = job.get("state", "")
        if self._tqdm is not None:
            if self.bar is None:
                self.bar = self._tqdm(total=total or None, desc=f"{job.get('name', self.job_id)}", unit="epoch")
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = epoch
            self.bar.set_postfix(state=state, loss=loss if loss is not None else "–", refresh=False)
            self.bar.refresh()
        elif epoch != self.shown or state in FINISHED:
            self.shown = epoch
            done = f"{epoch}/{total}" if total else str(epoch)
            loss_text = f" loss {loss:.5f}" if isinstance(loss, (int, float)) else ""
            sys.stderr.write(f"\r{job.get('name', self.job_id)}: {state} epoch {done}{loss_text}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown >= 0:
            sys.stderr.write("\n")
