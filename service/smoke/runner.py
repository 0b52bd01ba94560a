"""The smoke test: upload the shipped assets, run every job kind, check, clean up.

:func:`run_smoke` drives a running tabxai over its REST API (API.md) with nothing but
the standard library's HTTP client, so the command works in the slim production image
(httpx is a dev extra only). It stops at the first failure, deletes whatever it created
either way, and returns a :class:`SmokeReport`: one :class:`Step` per request group and
the one-line reason of the failure, if any.

Tolerances (:data:`TOLERANCES`), against numbers computed when the assets were built
(``build_assets.compute_expected``):

- ``tree_shap`` 1e-4, relative to the largest expected |value| (base value or mean
  |SHAP|): the service stores SHAP values as float32 and runs its own translation of the
  model, so float32 rounding (about 1e-6 relative) is expected; a wrong sign, a swapped
  feature or a lost tree is off by orders of magnitude more.
- ``permutation_importance`` 1e-9, absolute: the same scorer on the same permutations of
  the same rows; accuracy moves in steps of 1/300, so any real difference is far larger.
- ``feature_vectors`` 1e-9, absolute (importances are at most 1): deterministic float64
  arithmetic on the same trees.
- ``rashomon_interactions`` 1e-6, relative to the largest expected |value| of the same
  quantity: the same float32 ONNX predictions through the same code; the margin covers
  onnxruntime's thread count, which the worker chooses.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import math
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ASSETS = Path(__file__).resolve().parent / "assets"
FEATURE_NAMES: tuple[str, ...] = tuple(f"f{i}" for i in range(6))
TARGET = "y"
N_ROWS = 300

# Model format -> file in ASSETS.
MODEL_FILES: dict[str, str] = {"xgboost": "xgboost.json", "lightgbm": "lightgbm.txt",
                               "sklearn": "forest.skops", "onnx": "mlp.onnx"}
# Job kind -> the model format it runs on, its params (every one spelled out, so that a
# change of a server default cannot change the numbers), one 2-D array to download and
# one plot to render.
JOB_MODEL: dict[str, str] = {"tree_shap": "xgboost", "permutation_importance": "sklearn",
                             "feature_vectors": "lightgbm", "rashomon_interactions": "onnx"}
JOB_PARAMS: dict[str, dict[str, Any]] = {
    "tree_shap": {"interactions": True, "random_state": 0},
    "permutation_importance": {"scoring": "accuracy", "n_repeats": 5, "random_state": 0},
    "feature_vectors": {"window_size": 1, "order": "expected", "dedup_rules": True,
                        "bagging": 0, "random_state": 0},
    "rashomon_interactions": {"features": ["f0", "f1", "f2"], "shuffle_times": 2,
                              "delta": 0.5, "max_rows": 100, "epsilon_rate": 0.1,
                              "random_state": 0},
}
JOB_ARRAY: dict[str, str] = {"tree_shap": "shap_values", "permutation_importance": "importances",
                             "feature_vectors": "vectors", "rashomon_interactions": "fis_clouds"}
JOB_PLOT: dict[str, str] = {"tree_shap": "importance", "permutation_importance": "importance",
                            "feature_vectors": "feature_vectors", "rashomon_interactions": "swarm"}
TOLERANCES: dict[str, float] = {"tree_shap": 1e-4, "permutation_importance": 1e-9,
                                "feature_vectors": 1e-9, "rashomon_interactions": 1e-6}
# float32 result arrays against the float64 summary the service computed from them.
ARRAY_RTOL = 1e-6

REQUEST_SECONDS = 60.0
POLL_SECONDS = 0.25
CLEANUP_SECONDS = 30.0
FINAL = ("succeeded", "failed", "cancelled")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SmokeFailure(Exception):
    """A check failed; ``str()`` is the one-line reason, naming the step's kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class Step:
    """One row of the report: what was done, how long it took, what it found."""

    name: str
    seconds: float
    result: str
    ok: bool = True


@dataclass
class SmokeReport:
    """The steps run, in order, and the first failure (None when every check passed)."""

    steps: list[Step] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None

    def table(self) -> str:
        """The steps as a fixed-width table: step, seconds, result."""
        width = max([len("step"), *(len(s.name) for s in self.steps)])
        lines = [f"{'step':<{width}}  {'seconds':>7}  result"]
        for s in self.steps:
            result = s.result if s.ok else f"FAILED: {s.result}"
            lines.append(f"{s.name:<{width}}  {s.seconds:>7.2f}  {result}")
        verdict = "all checks passed" if self.ok else "FAILED"
        lines.append(f"{'total':<{width}}  {self.seconds:>7.2f}  {verdict}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class Api:
    """A minimal client of the tabxai REST API (urllib; one request at a time)."""

    def __init__(self, base_url: str, *, key: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SmokeFailure("usage", f"the URL {base_url!r} is not an http(s) URL like "
                                        "http://127.0.0.1:8000")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, kind: str, method: str, path: str, *, json_body: Any = None,
             body: bytes | None = None, content_type: str | None = None,
             query: Mapping[str, str] | None = None,
             expect: Sequence[int] = (200,)) -> Reply:
        """Send one request; a status outside ``expect`` is a SmokeFailure of ``kind``."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = dict(self._headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_SECONDS) as response:
                reply = Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, dict(exc.headers), exc.read())
        except TimeoutError as exc:
            raise SmokeFailure(kind, f"{method} {path} got no answer within "
                                     f"{REQUEST_SECONDS:.0f} s") from exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SmokeFailure(kind, f"cannot reach {self.base_url}: {reason}") from exc
        if reply.status not in expect:
            raise SmokeFailure(kind, f"{method} {path} answered {reply.status}"
                                     f"{_problem_detail(reply)}")
        return reply


def _problem_detail(reply: Reply) -> str:
    """': <detail>' of a problem document (or the start of the body), on one line."""
    try:
        text = str(reply.json().get("detail") or "")
    except (ValueError, AttributeError):
        text = reply.content[:200].decode("utf-8", "replace")
    text = " ".join(text.split())
    return f": {text}" if text else ""


def multipart(fields: Mapping[str, str], filename: str, content: bytes,
              content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one part ``file``; returns the
    body and its Content-Type (with the boundary)."""
    boundary = f"tabxai-smoke-{secrets.token_hex(16)}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                      f"\r\n\r\n{value}\r\n".encode())
    chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                  f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode())
    chunks.append(content)
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class _Run:
    """One smoke run: what it created (for the cleanup) and the steps it timed."""

    def __init__(self, api: Api, expected: dict[str, Any], timeout_s: float) -> None:
        self.api = api
        self.expected = expected
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.report = SmokeReport()
        self.dataset_id: str | None = None
        self.model_ids: dict[str, str] = {}
        self.job_ids: dict[str, str] = {}

    @contextmanager
    def step(self, name: str, *, budgeted: bool = True) -> Iterator[list[str]]:
        """Time a step; the body appends its result text to the yielded list. A budgeted
        step does not start once the --timeout budget is spent."""
        kind = name.split(":")[0]
        result: list[str] = []
        t0 = time.monotonic()
        try:
            if budgeted and t0 > self.deadline:
                raise SmokeFailure(kind, f"the {self.timeout_s:g} s budget (--timeout) ran "
                                         f"out before {name!r}")
            yield result
        except SmokeFailure as exc:
            self.report.steps.append(Step(name, time.monotonic() - t0, str(exc), ok=False))
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            # An answer of the wrong shape (a field missing, not JSON): a failure of this
            # step like any other, so that the cleanup still runs.
            failure = SmokeFailure(kind, f"unexpected answer ({type(exc).__name__}: {exc})")
            self.report.steps.append(Step(name, time.monotonic() - t0, str(failure), ok=False))
            raise failure from exc
        self.report.steps.append(Step(name, time.monotonic() - t0, "; ".join(result) or "ok"))

    # ------------------------------------------------------------------ the steps

    def run(self) -> None:
        with self.step("server") as out:
            self.api.call("server", "GET", "/readyz")
            out.append(f"{self.api.base_url} ready")
        self.upload_dataset()
        for fmt in MODEL_FILES:
            self.upload_model(fmt)
        with self.step("submit jobs") as out:
            for kind in JOB_MODEL:
                self.submit(kind)
            out.append(f"{len(self.job_ids)} jobs queued")
        for kind in JOB_MODEL:
            self.wait(kind)
            with self.step(f"{kind}: result") as out:
                summary = self.api.call(kind, "GET", f"/v1/jobs/{self.job_ids[kind]}/result").json()
                out.append(CHECKS[kind](summary, self.expected[kind], TOLERANCES[kind]))
            with self.step(f"{kind}: arrays") as out:
                out.append(self.check_array(kind, summary))
            with self.step(f"{kind}: plots") as out:
                out.append(self.check_plot(kind))

    def upload_dataset(self) -> None:
        with self.step("upload dataset") as out:
            body, content_type = multipart({"target": TARGET, "name": "tabxai-smoke"},
                                           "data.csv", (ASSETS / "data.csv").read_bytes(),
                                           "text/csv")
            dataset = self.api.call("dataset", "POST", "/v1/datasets", body=body,
                                    content_type=content_type, expect=(201,)).json()
            self.dataset_id = dataset["id"]
            columns = [c["name"] for c in dataset["columns"]]
            if dataset["n_rows"] != self.expected["n_rows"]:
                raise SmokeFailure("dataset", f"n_rows is {dataset['n_rows']}, expected "
                                              f"{self.expected['n_rows']}")
            if columns != [*FEATURE_NAMES, TARGET]:
                raise SmokeFailure("dataset", f"columns are {columns}, expected "
                                              f"{[*FEATURE_NAMES, TARGET]}")
            out.append(f"{dataset['id']}: {dataset['n_rows']} rows, {len(columns)} columns")

    def upload_model(self, fmt: str) -> None:
        with self.step(f"upload model {fmt}") as out:
            path = ASSETS / MODEL_FILES[fmt]
            fields = {"name": f"tabxai-smoke-{fmt}"}
            if fmt == "onnx":  # an ONNX graph stores no column names
                fields["feature_names"] = json.dumps(list(FEATURE_NAMES))
            body, content_type = multipart(fields, path.name, path.read_bytes())
            model = self.api.call(fmt, "POST", "/v1/models", body=body,
                                  content_type=content_type, expect=(201,)).json()
            self.model_ids[fmt] = model["id"]
            found = (model["format"], model["task"], list(model["feature_names"] or []))
            wanted = (fmt, "binary", list(FEATURE_NAMES))
            if found != wanted:
                raise SmokeFailure(fmt, f"the model was read as (format, task, features) "
                                        f"{found}, expected {wanted}")
            if fmt in ("xgboost", "lightgbm") and model["kind"] != "tree":
                raise SmokeFailure(fmt, f"the model's kind is {model['kind']}, expected tree")
            out.append(f"{model['id']}: {model['kind']}, {model['task']}, "
                       f"{model['n_features']} features")

    def submit(self, kind: str) -> None:
        job = self.api.call(kind, "POST", "/v1/jobs", expect=(202,), json_body={
            "kind": kind, "model_id": self.model_ids[JOB_MODEL[kind]],
            "dataset_id": self.dataset_id, "device": "auto", "params": JOB_PARAMS[kind]}).json()
        self.job_ids[kind] = job["id"]

    def wait(self, kind: str) -> None:
        with self.step(f"{kind}: job") as out:
            job_id = self.job_ids[kind]
            job = self.api.call(kind, "GET", f"/v1/jobs/{job_id}").json()
            while job["status"] not in FINAL:
                if time.monotonic() > self.deadline:
                    raise SmokeFailure(kind, f"job {job_id} is still {job['status']} at "
                                             f"{job['progress']:.0%} ({job['stage']}) after "
                                             f"{self.timeout_s:g} s (--timeout)")
                time.sleep(POLL_SECONDS)
                job = self.api.call(kind, "GET", f"/v1/jobs/{job_id}").json()
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                raise SmokeFailure(kind, f"job {job_id} {job['status']}"
                                         f"{': ' + error.get('code', '') if error else ''}"
                                         f"{': ' + error.get('message', '') if error else ''}")
            out.append(f"{job_id} succeeded on {job.get('device_used') or '?'} in "
                       f"{_run_seconds(job):.2f} s")

    def check_array(self, kind: str, summary: dict[str, Any]) -> str:
        """One 2-D array in .npy, .parquet and .csv: the same values, the listed shape,
        and (where the summary holds them) the summary's numbers."""
        import pyarrow.parquet as pq

        name = JOB_ARRAY[kind]
        base = f"/v1/jobs/{self.job_ids[kind]}/result/arrays"
        listed = {a["name"]: a for a in self.api.call(kind, "GET", base).json()}
        if name not in listed:
            raise SmokeFailure(kind, f"the result has no array {name!r}; it has "
                                     f"{sorted(listed)}")
        shape, dtype = tuple(listed[name]["shape"]), listed[name]["dtype"]
        npy = np.load(io.BytesIO(self.api.call(kind, "GET", f"{base}/{name}.npy").content),
                      allow_pickle=False)
        if npy.shape != shape or str(npy.dtype) != dtype or len(shape) != 2:
            raise SmokeFailure(kind, f"{name}.npy is {npy.dtype} {list(npy.shape)}, listed as "
                                     f"2-D {dtype} {list(shape)}")
        # The row index, then the label of each row when the first axis has labels.
        first = 2 if (listed[name].get("dims") or [{}])[0].get("labels") else 1
        table = pq.read_table(io.BytesIO(
            self.api.call(kind, "GET", f"{base}/{name}.parquet").content))
        from_parquet = np.column_stack([table.column(c).to_numpy(zero_copy_only=False)
                                        for c in table.column_names[first:]]).astype(npy.dtype)
        _same_array(kind, f"{name}.parquet", from_parquet, npy)
        text = self.api.call(kind, "GET", f"{base}/{name}.csv").content.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        from_csv = np.array([[float(v) if v else math.nan for v in row[first:]]
                             for row in rows[1:]]).astype(npy.dtype)
        _same_array(kind, f"{name}.csv", from_csv.reshape(-1, npy.shape[1]), npy)
        ARRAY_CHECKS.get(kind, lambda *_: None)(npy, summary)
        return f"{name} {list(shape)} {dtype}: .npy = .parquet = .csv"

    def check_plot(self, kind: str) -> str:
        name = JOB_PLOT[kind]
        base = f"/v1/jobs/{self.job_ids[kind]}/plots"
        names = self.api.call(kind, "GET", base).json()
        if name not in names:
            raise SmokeFailure(kind, f"the plots are {names}, without {name!r}")
        svg = self.api.call(kind, "GET", f"{base}/{name}.svg").content
        if not svg.lstrip().startswith((b"<?xml", b"<svg")) or b"<svg" not in svg[:2000]:
            raise SmokeFailure(kind, f"{name}.svg does not start as SVG: {svg[:40]!r}")
        png = self.api.call(kind, "GET", f"{base}/{name}.png").content
        if not png.startswith(PNG_SIGNATURE):
            raise SmokeFailure(kind, f"{name}.png does not start as PNG: {png[:8]!r}")
        return f"{name}.svg {len(svg) / 1024:.0f} KiB, {name}.png {len(png) / 1024:.0f} KiB"

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Delete every job, model and dataset this run made, then confirm each is gone.
        Runs past the --timeout budget: what the run made must not stay behind."""
        if not (self.job_ids or self.model_ids or self.dataset_id):
            return
        with self.step("cleanup", budgeted=False) as out:
            for kind, job_id in self.job_ids.items():
                self._delete_job(kind, job_id)
            for fmt, model_id in self.model_ids.items():
                self.api.call(fmt, "DELETE", f"/v1/models/{model_id}", expect=(204, 404))
            if self.dataset_id:
                self.api.call("dataset", "DELETE", f"/v1/datasets/{self.dataset_id}",
                              expect=(204, 404))
            paths = ([f"/v1/jobs/{i}" for i in self.job_ids.values()]
                     + [f"/v1/models/{i}" for i in self.model_ids.values()]
                     + ([f"/v1/datasets/{self.dataset_id}"] if self.dataset_id else []))
            for path in paths:
                self.api.call("cleanup", "GET", path, expect=(404,))
            out.append(f"deleted {len(self.job_ids)} jobs, {len(self.model_ids)} models, "
                       f"{1 if self.dataset_id else 0} dataset; each now 404")

    def _delete_job(self, kind: str, job_id: str) -> None:
        # A job that did not end (a failure or the time budget stopped us) is cancelled
        # first: a running job cannot be deleted.
        job = self.api.call("cleanup", "GET", f"/v1/jobs/{job_id}", expect=(200, 404))
        if job.status == 404:
            return
        if job.json()["status"] not in FINAL:
            self.api.call("cleanup", "POST", f"/v1/jobs/{job_id}/cancel")
            until = time.monotonic() + CLEANUP_SECONDS
            while self.api.call("cleanup", "GET", f"/v1/jobs/{job_id}").json()["status"] \
                    not in FINAL:
                if time.monotonic() > until:
                    raise SmokeFailure("cleanup", f"job {job_id} ({kind}) did not stop within "
                                                  f"{CLEANUP_SECONDS:g} s of its cancel")
                time.sleep(POLL_SECONDS)
        self.api.call("cleanup", "DELETE", f"/v1/jobs/{job_id}", expect=(204,))


def run_smoke(base_url: str, *, key: str | None = None, timeout_s: float = 300.0,
              expected_path: Path | None = None) -> SmokeReport:
    """Run the smoke test against the tabxai at ``base_url``.

    key: API key, sent as ``Authorization: Bearer``. timeout_s: budget in seconds for the
    whole run (uploads, jobs, checks); the cleanup runs even past it. expected_path: the
    expected numbers (default the shipped ``expected.json``).

    Never raises for a failed check: the report's ``failure`` holds the first reason.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    expected = json.loads((expected_path or ASSETS / "expected.json").read_text("utf-8"))
    started = time.monotonic()
    try:
        run = _Run(Api(base_url, key=key), expected, timeout_s)
    except SmokeFailure as exc:
        return SmokeReport(failure=str(exc), seconds=time.monotonic() - started)
    try:
        run.run()
    except SmokeFailure as exc:
        run.report.failure = str(exc)
    try:
        run.cleanup()
    except SmokeFailure as exc:
        run.report.failure = run.report.failure or str(exc)
    run.report.seconds = time.monotonic() - started
    return run.report


# ---------------------------------------------------------------------- the checks


def _fmt(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else repr(value)


def _tol(tol: float) -> str:
    mantissa, exponent = f"{tol:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _close(kind: str, what: str, got: Any, want: float | None, tol: float,
           scale: float | None = None) -> None:
    """``got`` within ``tol`` of ``want``: absolute, or relative to ``scale`` when given."""
    if want is None:
        if got is not None:
            raise SmokeFailure(kind, f"{what} is {_fmt(got)}, expected none (null)")
        return
    allowed = tol * scale if scale is not None else tol
    if not isinstance(got, int | float) or not math.isfinite(got) or abs(got - want) > allowed:
        note = " relative" if scale is not None else ""
        raise SmokeFailure(kind, f"{what} is {_fmt(got)}, expected {_fmt(want)} "
                                 f"(tol {_tol(tol)}{note})")


def _equal(kind: str, what: str, got: Any, want: Any) -> None:
    if got != want:
        raise SmokeFailure(kind, f"{what} is {got!r}, expected {want!r}")


def _same_array(kind: str, what: str, got: npt.NDArray[Any], want: npt.NDArray[Any]) -> None:
    if got.shape != want.shape:
        raise SmokeFailure(kind, f"{what} has shape {list(got.shape)}, the .npy "
                                 f"{list(want.shape)}")
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        r, c = np.argwhere(~same)[0]
        raise SmokeFailure(kind, f"{what} holds {got[r, c]!r} at [{r}, {c}], the .npy "
                                 f"{want[r, c]!r}")


def _check_tree_shap(summary: dict[str, Any], expected: dict[str, Any], tol: float) -> str:
    kind = "tree_shap"
    names = list(FEATURE_NAMES)
    _equal(kind, "feature_names", summary["feature_names"], names)
    scale = max([abs(expected["base_value"]), *expected["mean_abs_shap"].values()])
    _close(kind, "the base value", summary["base_values"][0], expected["base_value"], tol, scale)
    got = {item["feature"]: item["mean_abs_shap"][0] for item in summary["importance"]}
    for name in names:
        _close(kind, f"mean |SHAP| of {name}", got.get(name), expected["mean_abs_shap"][name],
               tol, scale)
    pairs = summary.get("interaction_importance")
    if pairs is None:
        raise SmokeFailure(kind, "the result has no interaction_importance; the job asked for "
                                 "interactions")
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            _close(kind, f"mean |SHAP interaction| of {a}×{b}", pairs[i][j],
                   expected["interaction_importance"][i][j], tol, scale)
    provenance = summary.get("provenance", {})
    residual = provenance.get("max_additivity_residual")
    _close(kind, "the additivity residual max |sum(phi) + base - margin|", residual, 0.0, tol,
           max(1.0, float(provenance.get("prediction_scale") or 0.0)))
    n = len(names)
    return (f"{n} mean |SHAP|, base value, {n * n} interaction means within "
            f"{_tol(tol)} relative")


def _check_permutation(summary: dict[str, Any], expected: dict[str, Any], tol: float) -> str:
    kind = "permutation_importance"
    _equal(kind, "scoring", summary["scoring"], expected["scoring"])
    _close(kind, "baseline_score", summary["baseline_score"], expected["baseline_score"], tol)
    got = {item["feature"]: item["mean"] for item in summary["importances"]}
    for name, want in expected["mean"].items():
        _close(kind, f"mean importance of {name}", got.get(name), want, tol)
    return f"baseline {summary['scoring']} and {len(got)} means within {_tol(tol)}"


def _check_feature_vectors(summary: dict[str, Any], expected: dict[str, Any],
                           tol: float) -> str:
    kind = "feature_vectors"
    features = {f["feature"]: f for f in summary["features"]}
    _equal(kind, "the top feature", summary["features"][0]["feature"], expected["top_feature"])
    _equal(kind, "n_trees", summary["n_trees"], expected["n_trees"])
    _equal(kind, "n_rules", summary["n_rules"], expected["n_rules"])
    for quantity in ("importance", "x", "y"):
        for name, want in expected[quantity].items():
            _close(kind, f"{quantity} of {name}", features.get(name, {}).get(quantity), want, tol)
    return (f"top feature {expected['top_feature']}; {len(features)} importances and "
            f"vectors within {_tol(tol)}")


def _check_rashomon(summary: dict[str, Any], expected: dict[str, Any], tol: float) -> str:
    kind = "rashomon_interactions"
    _equal(kind, "loss", summary["loss"], expected["loss"])
    for quantity in ("loss_ref", "epsilon"):
        _close(kind, quantity, summary[quantity], expected[quantity], tol,
               abs(expected[quantity]))
    got = {",".join(i["features"]): i for i in summary["interactions"]}
    _equal(kind, "the feature pairs", sorted(got), sorted(expected["interactions"]))
    for quantity in ("reference", "min", "max", "mean"):
        values = [v[quantity] for v in expected["interactions"].values()
                  if v[quantity] is not None]
        scale = max([abs(v) for v in values] + [1e-300])
        for pair, want in expected["interactions"].items():
            _close(kind, f"FIS {quantity} of {pair.replace(',', '×')}", got[pair][quantity],
                   want[quantity], tol, scale)
    return (f"loss_ref, epsilon and {len(got)} pairs' FIS (reference, min, max, mean) within "
            f"{_tol(tol)} relative")


def _array_tree_shap(values: npt.NDArray[Any], summary: dict[str, Any]) -> None:
    means = np.abs(values.astype(np.float64)).mean(axis=0)
    by_name = {item["feature"]: item["mean_abs_shap"][0] for item in summary["importance"]}
    scale = max(by_name.values())
    for name, mean in zip(summary["feature_names"], means, strict=True):
        _close("tree_shap", f"mean |shap_values.npy| of {name}", float(mean), by_name[name],
               ARRAY_RTOL, scale)


def _array_permutation(values: npt.NDArray[Any], summary: dict[str, Any]) -> None:
    for item in summary["importances"]:
        for r, want in enumerate(item["values"]):
            _close("permutation_importance", f"importances.npy[{item['index']}, {r}] "
                   f"({item['feature']})", float(values[item["index"], r]), want, ARRAY_RTOL,
                   1.0)


def _array_feature_vectors(values: npt.NDArray[Any], summary: dict[str, Any]) -> None:
    by_name = {f["feature"]: f for f in summary["features"]}
    for i, name in enumerate(FEATURE_NAMES):
        for column, axis in ((0, "y"), (1, "x")):
            _close("feature_vectors", f"vectors.npy {axis} of {name}",
                   float(values[i, column]), by_name[name][axis], ARRAY_RTOL, 1.0)


CHECKS: dict[str, Callable[[dict[str, Any], dict[str, Any], float], str]] = {
    "tree_shap": _check_tree_shap,
    "permutation_importance": _check_permutation,
    "feature_vectors": _check_feature_vectors,
    "rashomon_interactions": _check_rashomon,
}
ARRAY_CHECKS: dict[str, Callable[[npt.NDArray[Any], dict[str, Any]], None]] = {
    "tree_shap": _array_tree_shap,
    "permutation_importance": _array_permutation,
    "feature_vectors": _array_feature_vectors,
}


def _run_seconds(job: dict[str, Any]) -> float:
    """Seconds from started_at to finished_at of a finished job (0 when unknown)."""
    from datetime import datetime

    try:
        start = datetime.fromisoformat(job["started_at"])
        end = datetime.fromisoformat(job["finished_at"])
    except (TypeError, ValueError, KeyError):
        return 0.0
    return (end - start).total_seconds()
