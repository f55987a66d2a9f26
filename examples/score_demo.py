"""The end of ``make demo``: serve the champion and the decorrelated alias from one process, score real 2011A
collision jets with each through the raw-jet route.

    python examples/score_demo.py [--model models:/wtag@champion ...] [--port 8080] [--data ../shared/data]
    python examples/score_demo.py --stop

The server is started in the background (pid and log in ``--state-dir``) and left running so the README's
``curl`` examples work afterwards; a server this command started earlier is stopped first. Jets come from the
CMS 2011A ``cms2011a_jet_pfcands_params*.npy`` files in ``--data``; where that folder is absent, new jets are
simulated with the Pythia generator (a seed the training data did not use). Only the PF candidates and the
CMS jet kinematics are sent: the server computes every model input itself.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import awkward as ak
import numpy as np

from serving.settings import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV
from wtag import schema
from wtag.errors import WtagError
from wtag.jets import read_jets

DEMO_SEED = 20260
CHUNK_JETS = 256


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(state_dir: Path) -> bool:
    """Stop the server a previous demo left running (by its recorded pid); True if one was stopped."""
    pidfile = state_dir / "server.pid"
    if not pidfile.is_file():
        return False
    pid = int(pidfile.read_text().strip() or 0)
    pidfile.unlink()
    if pid <= 0 or not _pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def _request(url: str, body: bytes | None = None, timeout: float = 600.0) -> bytes:
    headers = {"Content-Type": "application/json"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.read()


def start(models: list[str], host: str, port: int, state_dir: Path, timeout: float = 300.0) -> str:
    """Start ``python -m serving`` detached (no ``models``: the server's default, champion and decorrelated);
    return its URL once it is ready."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "server.log"
    with open(log, "wb") as out:
        command = [sys.executable, "-m", "serving", *(f"--model={m}" for m in models), "--host", host,
                   "--port", str(port)]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (state_dir / "server.pid").write_text(f"{proc.pid}\n")
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WtagError(f"the server exited with status {proc.returncode}; its log {log} ends with:\n"
                            + "\n".join(log.read_text().splitlines()[-15:]))
        with contextlib.suppress(OSError, urllib.error.URLError):
            _request(f"{url}/v2/health/ready", timeout=2.0)
            return url
        time.sleep(0.5)
    raise WtagError(f"the server did not become ready within {timeout:.0f} s (log: {log})")


def load_jets(data: Path) -> tuple[ak.Array, str]:
    """The real 2011A jets, or freshly simulated ones where the data folder is absent."""
    files = sorted(data.glob("cms2011a_jet_pfcands_params*.npy")) if data.is_dir() else []
    if files:
        from wtag.sources.cms_ntuple import read_cms_ntuple

        return read_cms_ntuple(files), f"CMS 2011A collision data, run 160578 ({len(files)} files in {data})"
    from wtag.sources.pythia import generate

    with tempfile.TemporaryDirectory(prefix="wtag-demo-") as tmp:
        paths = []
        for process in ("ttbar", "qcd"):
            paths += generate(process, 100, seed=DEMO_SEED, output=tmp, workers=1, progress=False)
        jets = read_jets(paths)
    return jets, f"{data} is absent: 200 new Pythia jets (ttbar W and QCD, seed {DEMO_SEED})"


def jet_requests(jets: ak.Array) -> list[dict[str, object]]:
    """The /v1/score-jets form: PF candidates plus the given jet kinematics and event ids."""
    out = []
    columns = {key: ak.to_list(jets[f"ak7pfcand_{key}"]) for key in ("pt", "eta", "phi", "id", "charge")}
    scalars = {"jet_pt": "jet_pt_ak7", "jet_eta": "jet_eta_ak7", "jet_phi": "jet_phi_ak7", "jet_E": "jet_E_ak7",
               "run": "run", "lumi": "lumi", "event": "event", "ijet": "ijet"}
    values = {key: ak.to_numpy(jets[branch]) for key, branch in scalars.items()}
    for i in range(len(jets)):
        jet: dict[str, object] = {key: columns[key][i] for key in columns}
        for key, array in values.items():
            value = array[i]
            if np.issubdtype(array.dtype, np.floating):
                if np.isfinite(value):
                    jet[key] = float(value)
            elif value >= 0:
                jet[key] = int(value)
        out.append(jet)
    keys = [set(jet) for jet in out]
    common = set.intersection(*keys) if keys else set()
    return [{k: v for k, v in jet.items() if k in common} for jet in out]


def histogram(scores: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    counts, edges = np.histogram(scores, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    return [f"  [{lo:.1f}, {hi:.1f}) {n:6d} {'#' * round(width * n / top)}"
            for lo, hi, n in zip(edges, edges[1:], counts)]


def score_with(url: str, name: str, bodies: list[bytes], jets: ak.Array) -> None:
    """Score every jet with the served model ``name`` through POST /v1/score-jets?model=NAME and summarize."""
    query = urllib.parse.urlencode({"model": name})
    meta = json.loads(_request(f"{url}/v1/metadata?{query}"))
    print(f"\n[{name}] {meta['uri']} (registered model {meta['registered_model'] or '-'}, version "
          f"{meta['version'] or '-'}), tagger {meta['tagger']}, sha256 {meta['sha256'][:16]}..., on {meta['provider']}")
    scores = []
    start_time = time.perf_counter()
    for body in bodies:
        scores += json.loads(_request(f"{url}/v1/score-jets?{query}", body))["scores"]
    seconds = time.perf_counter() - start_time
    scores_np = np.asarray(scores, dtype=np.float32)
    print(f"scored {len(scores_np)} jets through POST /v1/score-jets?model={name} in {seconds:.2f} s "
          f"({len(scores_np) / seconds:,.0f} jets/s end to end, features computed server-side, "
          f"{CHUNK_JETS} jets per request)")
    q = np.quantile(scores_np, [0.1, 0.5, 0.9])
    print(f"W-tag score: mean {scores_np.mean():.3f}, 10% {q[0]:.3f}, median {q[1]:.3f}, 90% {q[2]:.3f}")
    print("\n".join(histogram(scores_np)))
    pt, eta = ak.to_numpy(jets["jet_pt_ak7"]), ak.to_numpy(jets["jet_eta_ak7"])
    in_window = (pt > schema.JET_PT_MIN) & (pt < schema.JET_PT_MAX) & (np.abs(eta) < schema.JET_ETA_MAX)
    if in_window.any():
        chosen = scores_np[in_window]
        print(f"{int(in_window.sum())} jets pass 200 < pT < 500 GeV, |eta| < 2 (the training selection): "
              f"scores {', '.join(f'{s:.3f}' for s in chosen[:20])}{' ...' if len(chosen) > 20 else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/score_demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[],
                        help="a model to serve (repeatable; default: the server's own, the champion and the "
                             "decorrelated alias when main has set it)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--state-dir", type=Path, default=Path("data/serve"), help="server pid and log")
    parser.add_argument("--stop", action="store_true", help="only stop the server a previous demo started")
    args = parser.parse_args(argv)
    if args.stop:
        print("stopped the demo server" if stop(args.state_dir) else "no demo server was running")
        return 0
    try:
        if stop(args.state_dir):
            print("stopped the server an earlier demo left running")
        url = start(args.model, args.host, args.port, args.state_dir)
        names = [m["name"] for m in json.loads(_request(f"{url}/v2/models"))["models"]]
        print(f"serving {len(names)} model(s) from one process at {url}: {', '.join(names)}")
        jets, origin = load_jets(args.data)
        print(f"jets: {origin}: {len(jets)} jets")
        requests = jet_requests(jets)
        bodies = [json.dumps({"jets": requests[i:i + CHUNK_JETS]}).encode()
                  for i in range(0, len(requests), CHUNK_JETS)]
        for name in names:
            score_with(url, name, bodies, jets)
    except (WtagError, urllib.error.HTTPError, urllib.error.URLError) as exc:
        detail = exc.read().decode(errors="replace") if isinstance(exc, urllib.error.HTTPError) else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return 2
    print(f"\nthe server keeps running at {url} (log {args.state_dir / 'server.log'}); try\n"
          f"  curl -s {url}/v2/models\n"
          f"  curl -s {url}/v1/metadata\n"
          f"  curl -s -X POST {url}/v1/score-jets -H 'Content-Type: application/json' \\\n"
          "       -d '{\"jets\": [{\"pt\": [120.0, 80.0, 15.0], \"eta\": [0.10, 0.35, 0.2], "
          "\"phi\": [1.00, 1.30, 1.1]}]}'\n"
          f"stop it with: python examples/score_demo.py --stop --state-dir {args.state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
