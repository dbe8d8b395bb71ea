"""``trialguard bench run``: detection at scale, and how its cost grows with history.

Two measurements, each run in a fresh child process so that the peak RSS is
the detection's own:

1. one day of ``--rows`` transactions over ``--terminals`` terminals in a fresh
   database: wall time of :func:`pipelines.detect.run.run_detection` and peak RSS;
2. a nightly run on day 5 vs day 60 of a trial of ``--history-rows`` rows a day
   (the store holds 5 or 60 days of transactions and ``terminal_day``
   aggregates): the ratio of the two run times (target <= 1.3).

Data come from a fast vectorised generator (ordinary terminals with a few
signals sprinkled in); the simulator is not used, so the benchmark measures
detection, not simulation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl

from features.schema import TERMINALS, TRANSACTIONS, polars_schema, stored_columns

START = date(2026, 3, 1)


def synth_registry(n_terminals: int, seed: int = 0) -> pl.DataFrame:
    """Registry rows of ``n_terminals`` active trial terminals."""
    rng = np.random.default_rng(seed)
    i = np.arange(n_terminals)
    mcc = rng.choice(np.array(["5411", "5812", "5311", "7011", "5999"]), n_terminals)
    return pl.DataFrame(
        {
            "terminal_id": [f"{x:08d}" for x in i],
            "merchant_id": [
                f"100{3100 + x % 50:04d}{m}{x % 10000:04d}" for x, m in zip(i, mcc, strict=True)
            ],
            "serial_number": [f"SN{x:010d}" for x in i],
            "merchant_name": "bench shop",
            "registered_mcc": mcc,
            "registered_lat": 31.2 + rng.uniform(-0.3, 0.3, n_terminals),
            "registered_lon": 121.4 + rng.uniform(-0.3, 0.3, n_terminals),
            "region_code": [f"3101{x % 20:02d}" for x in i],
            "terminal_kind": rng.choice(
                np.array(["fixed_pos", "mobile_pos", "smart_pos"]), n_terminals
            ),
            "terminal_model": "B1",
            "channel_id": "CH1",
            "policy_id": "default",
            "activated_at": datetime(2026, 2, 28, 9),
            "trial_start": START,
            "trial_end": START + timedelta(days=90),
            "status": "active",
            "updated_at": datetime(2026, 2, 28, 8),
            "extra": None,
            "file_id": "bench-registry",
            "line_no": i + 1,
        },
        schema=polars_schema(stored_columns(TERMINALS)),
    )


def _stans(term: np.ndarray, secs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One STAN counter per terminal (``term`` sorted), increasing with time from a random start."""
    n = term.shape[0]
    order = np.lexsort((secs, term))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.searchsorted(term, term[order], side="left")
    start = rng.integers(0, 999_999, int(term.max()) + 1 if n else 0)
    return (start[term] + rank) % 999_999 + 1


def synth_day(registry: pl.DataFrame, n: int, day: date, seed: int) -> pl.DataFrame:
    """``n`` transactions of one local day spread over the registry's terminals."""
    rng = np.random.default_rng(seed)
    t = registry.height
    term = np.sort(rng.integers(0, t, n))
    secs = rng.integers(7 * 3600, 23 * 3600, n)
    base = datetime.combine(day, datetime.min.time())
    lat = registry.get_column("registered_lat").to_numpy()[term] + rng.normal(0, 0.0005, n)
    lon = registry.get_column("registered_lon").to_numpy()[term] + rng.normal(0, 0.0005, n)
    card = rng.integers(0, max(10 * t, 1000), n)
    rc = np.where(rng.random(n) < 0.05, rng.choice(np.array(["51", "55", "05", "91"]), n), "00")
    entry = rng.choice(np.array(["05", "07", "03", "91"]), n)
    ids = registry.get_column("terminal_id").to_numpy()
    mids = registry.get_column("merchant_id").to_numpy()
    mccs = registry.get_column("registered_mcc").to_numpy()
    df = pl.DataFrame(
        {
            "txn_id": pl.Series(np.arange(n)).cast(pl.String).str.pad_start(10, "0"),
            "terminal_id": ids[term],
            "merchant_id": mids[term],
            "txn_time": pl.Series(secs * 1_000_000).cast(pl.Duration("us")) + base,
            "txn_type": np.where(rng.random(n) < 0.01, "refund", "purchase"),
            "amount_minor": rng.lognormal(8.5, 1.0, n).astype(np.int64),
            "currency": "156",
            "card_token": pl.Series(card).cast(pl.String),
            "card_bin": "622202",
            "card_last4": pl.Series(card % 10000).cast(pl.String).str.pad_start(4, "0"),
            "card_type": rng.choice(np.array(["debit", "credit"]), n),
            "card_country": "CN",
            "entry_mode": entry,
            "pin_entered": True,
            "mcc": mccs[term],
            "response_code": rc,
            "stan": pl.Series(_stans(term, secs, rng)).cast(pl.String).str.pad_start(6, "0"),
            "rrn": None,
            "original_txn_id": None,
            "device_serial": pl.Series(term)
            .cast(pl.String)
            .str.pad_start(10, "0")
            .str.pad_start(12, "N")
            .str.replace("^NN", "SN"),
            "terminal_lat": lat,
            "terminal_lon": lon,
            "cell_id": "460-00-1-1",
            "ip_address": "10.0.0.1",
            "local_date": day,
            "extra": None,
            "file_id": f"bench-{day.isoformat()}",
            "line_no": np.arange(n) + 1,
        }
    )
    df = df.with_columns((pl.lit(day.strftime("%Y%m%d")) + pl.col("txn_id")).alias("txn_id"))
    return df.select(polars_schema(stored_columns(TRANSACTIONS)).names()).cast(
        dict(polars_schema(stored_columns(TRANSACTIONS)))
    )


def build_db(path: Path, rows_per_day: int, n_terminals: int, days: int) -> date:
    """A store with ``days`` days of synthetic data and their terminal_day rows; returns the last day."""
    from pipelines.detect.run import run_detection
    from pipelines.settings import Settings
    from pipelines.storage import connect

    con = connect(path)
    reg = synth_registry(n_terminals)
    con.register("_reg", reg.to_arrow())
    con.execute("INSERT INTO terminals SELECT * FROM _reg").fetchall()
    con.unregister("_reg")
    for d in range(days):
        day = START + timedelta(days=d)
        df = synth_day(reg, rows_per_day, day, seed=d)
        con.register("_day", df.to_arrow())
        con.execute("INSERT INTO transactions SELECT * FROM _day").fetchall()
        con.unregister("_day")
        del df
    # Aggregates of earlier days: computed once for the first day, then copied
    # (the nightly run reads them, it does not care how they were made).
    if days > 1:
        run_detection(Settings(db_path=path), START, con=con)
        # the leakage day tables of the earlier days, as their nightly runs left them
        from pipelines.detect.leakage import refresh_day_tables

        for d in range(1, days - 1):
            refresh_day_tables(con, START, START + timedelta(days=d))
        cols = [r[0] for r in con.execute("DESCRIBE terminal_day").fetchall()]
        sel = ", ".join("CAST(? AS DATE)" if c == "local_date" else c for c in cols)
        for d in range(1, days - 1):
            con.execute(
                f"INSERT INTO terminal_day SELECT {sel} FROM terminal_day WHERE local_date = ?",
                [START + timedelta(days=d), START],
            ).fetchall()
    con.execute("CHECKPOINT").fetchall()
    con.close()
    return START + timedelta(days=days - 1)


def _vmrss_mib() -> float:
    """Current resident memory of this process in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Background thread reading VmRSS every ``interval_s``: the peak per step, and where.

    The step of a sample is the function of ``pipelines/detect/run.py`` called by
    ``_run_one`` that the main thread is in (e.g. ``_detect_partitioned``,
    ``_leakage``); ``where`` is the project's part of the main thread's stack
    (file:line function) at the run's highest sample. The RSS after each step
    (``counts``) misses what a step frees before it returns; this does not.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        import threading

        self.interval_s = float(interval_s)
        self.peaks: dict[str, float] = {}
        self.peak = 0.0
        self.where: list[str] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _stack(self) -> list[tuple[str, int, str]]:
        frame = sys._current_frames().get(self._main)
        out = []
        while frame is not None:
            code = frame.f_code
            out.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        return out[::-1]  # outermost first

    def _loop(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        while not self._stop.wait(self.interval_s):
            rss = _vmrss_mib()
            stack = self._stack()
            step = "other"
            for k, (_f, _l, name) in enumerate(stack[:-1]):
                if name == "_run_one":
                    step = stack[k + 1][2]
                    break
            if rss > self.peaks.get(step, 0.0):
                self.peaks[step] = rss
            if rss > self.peak:
                self.peak = rss
                self.where = [
                    f"{Path(f).relative_to(root)}:{ln} {name}"
                    for f, ln, name in stack
                    if f.startswith(root) and "/.venv/" not in f
                ]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _worker_rss() -> tuple[float, float]:
    """(peak RSS MiB, CPU s) of a Dask worker process (run on the worker)."""
    import resource

    from pipelines.detect.run import _rss_mib

    r = resource.getrusage(resource.RUSAGE_SELF)
    return _rss_mib()[1], r.ru_utime + r.ru_stime


def _measure(db: str, day: str, runner: str = "local", dask_workers: int = 0) -> None:
    """Child process: one timed run, printed as JSON (time, peak RSS, counts).

    With ``runner="dask"`` a LocalCluster of ``dask_workers`` workers and Prefect's
    temporary API are started (and the workers' imports done) before the clock
    starts, as on a cluster that stays up between nights.
    """
    import contextlib
    import resource

    from pipelines.detect.fanout import run_workers
    from pipelines.detect.run import _rss_mib, run_detection
    from pipelines.settings import Settings

    dask: dict = {}
    with contextlib.ExitStack() as stack:
        kw: dict = {}
        client = None
        if runner == "dask":
            from distributed import Client

            from pipelines.detect.cluster import dask_cluster

            cluster = stack.enter_context(dask_cluster(None, workers=dask_workers or None))
            client = stack.enter_context(Client(cluster.address, set_as_default=False))
            client.run(__import__, "pipelines.detect.remote")
            client.run(__import__, "prefect.task_engine")
            kw = {"task_runner": "dask", "dask_address": cluster.address}
            dask = {"workers": cluster.workers, "threads": cluster.threads}
            before = client.run(_worker_rss)
        t0, c0 = time.perf_counter(), time.process_time()
        with RssSampler() as sampler:
            res = run_detection(Settings(db_path=Path(db)), date.fromisoformat(day), **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if client is not None:
            after = client.run(_worker_rss)
            dask["worker_peak_rss_mib"] = {k: round(v[0]) for k, v in after.items()}
            dask["workers_cpu_s"] = round(sum(after[k][1] - before[k][1] for k in after), 2)
    # This process's own peak (VmHWM). Not ru_maxrss: Linux carries the parent's
    # ru_maxrss over fork + exec, so it reported the generator's peak (issue 4: "7.2 GiB").
    rss = _rss_mib()[1]
    # Worker processes of the per-terminal step (pipelines.detect.run.run_workers): their CPU
    # time, and the largest peak of one of them (the peaks of the main process and of
    # the workers need not coincide: their sum bounds the run's peak from above). The
    # same inheritance applies: a worker's figure is at least this process's RSS when it
    # spawned the worker, so it is an upper bound.
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {
        "wall_s": wall,
        "cpu_s": cpu + kids.ru_utime + kids.ru_stime,
        "workers_cpu_s": kids.ru_utime + kids.ru_stime,
        "peak_rss_mib": rss,
        # With one worker there is no worker process; ru_maxrss of the children is then
        # that of `git` (pipelines.version.code_version), inherited from this process.
        "worker_peak_rss_mib": kids.ru_maxrss / 1024 if run_workers() > 1 else 0.0,
        "workers": run_workers(),
        "counts": res.counts,
        "sampled_peak_rss_mib": {k: round(v) for k, v in sampler.peaks.items()},
        "sampled_peak_where": sampler.where,
        "runner": runner,
        "dask": dask,
    }
    if dask:
        out["cpu_s"] = cpu + dask["workers_cpu_s"]
        out["workers_cpu_s"] = dask["workers_cpu_s"]
        out["workers"] = dask["workers"]
        out["worker_peak_rss_mib"] = max(dask["worker_peak_rss_mib"].values())
    print(json.dumps(out, default=str))


def _child(db: Path, day: date, runner: str = "local", dask_workers: int = 0) -> dict:
    env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "2")}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    cmd = [sys.executable, "-m", "pipelines.bench.run", "--_measure", str(db), day.isoformat()]
    out = subprocess.run(
        [*cmd, runner, str(dask_workers)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard bench run``."""
    parser.add_argument("--rows", type=int, default=10_000_000, help="transactions in the day")
    parser.add_argument(
        "--terminals", type=int, default=None, help="terminals (default rows / 50)"
    )
    parser.add_argument(
        "--history-rows",
        type=int,
        default=None,
        help="rows a day for the day-5 vs day-60 comparison (default rows / 20)",
    )
    parser.add_argument("--skip-history", action="store_true", help="only the one-day run")
    parser.add_argument(
        "--task-runner",
        nargs="+",
        choices=("local", "dask"),
        default=["local"],
        help="runners of the one-day run, measured in turn on the same store "
        "(e.g. --task-runner local dask)",
    )
    parser.add_argument(
        "--dask-workers",
        default="",
        help="worker counts of the dask runner's LocalCluster, e.g. 1,2 for the scaling "
        "ratio (default one per core)",
    )
    parser.add_argument("--workdir", default=None, help="folder for the benchmark databases")
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases of a temporary workdir"
    )


def run(args: argparse.Namespace, settings) -> int:
    """Run the benchmark and print its figures."""
    n = int(args.rows)
    terminals = int(args.terminals or max(n // 50, 100))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tg-bench-run-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"rows": n, "terminals": terminals}
    t0 = time.perf_counter()
    db = work / "one_day.duckdb"
    day = build_db(db, n, terminals, 1)
    report["generate_s"] = round(time.perf_counter() - t0, 1)
    runs = [("local", 0)] if "local" in args.task_runner else []
    if "dask" in args.task_runner:
        counts = [int(x) for x in str(args.dask_workers).split(",") if x.strip()] or [0]
        runs += [("dask", w) for w in counts]
    results = {}
    for runner, workers in runs:
        one = _child(db, day, runner, workers)
        label = runner if runner == "local" else f"dask-{one['workers']}w"
        results[label] = one
        _print_one(report, label, one, n, terminals)
    if len(results) > 1:
        base = next(iter(results))
        report["ratios_vs_" + base] = {
            k: round(v["wall_s"] / results[base]["wall_s"], 2) for k, v in results.items()
        }
        print(
            "wall / "
            + base
            + ": "
            + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios_vs_" + base].items())
        )
        flags = {k: v["counts"]["by_behaviour"] for k, v in results.items()}
        same = all(f == flags[base] for f in flags.values())
        print("detections by behaviour identical across runners: " + ("yes" if same else "NO"))
    if not args.skip_history:
        _history(args, report, n)
    print(json.dumps(report))
    if args.workdir is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)  # ~0.7 GB a million rows
    return 0


def _print_one(report: dict, label: str, one: dict, n: int, terminals: int) -> None:
    stages = {k: v for k, v in one["counts"].items() if k.endswith("_s") and k != "duration_s"}
    report.setdefault("one_day", {})[label] = {
        "wall_s": round(one["wall_s"], 2),
        "cpu_s": round(one["cpu_s"], 2),
        "peak_rss_mib": round(one["peak_rss_mib"]),
        "worker_peak_rss_mib": round(one["worker_peak_rss_mib"]),
        "workers": one["workers"],
        "workers_cpu_s": round(one["workers_cpu_s"], 2),
        "rss_mib": {k: v for k, v in one["counts"].items() if k.endswith("_mib")},
        "sampled_peak_rss_mib": one["sampled_peak_rss_mib"],
        "sampled_peak_where": one["sampled_peak_where"],
        "rows_per_s": round(n / one["wall_s"]),
        "stages_s": stages,
        "dask": one.get("dask", {}),
    }
    print(
        f"one day [{label}]: {n:,} transactions over {terminals:,} terminals: "
        f"{one['wall_s']:.1f} s ({one['cpu_s']:.1f} s CPU, of which "
        f"{one['workers_cpu_s']:.1f} s in {one['workers']} worker processes), "
        f"peak RSS {one['peak_rss_mib']:.0f} MiB (+ {one['worker_peak_rss_mib']:.0f} MiB "
        "per worker at most, an upper bound), load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print("  " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in stages.items()))
    print(
        "  peak RSS sampled every 50 ms, by step: "
        + ", ".join(f"{k} {v} MiB" for k, v in one["sampled_peak_rss_mib"].items())
    )
    print("  highest sample in: " + " > ".join(one["sampled_peak_where"]))
    if one.get("dask"):
        print(f"  dask workers' peak RSS (MiB): {one['dask']['worker_peak_rss_mib']}")


def _history(args: argparse.Namespace, report: dict, n: int) -> None:
    work = Path(args.workdir) if args.workdir else None
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="tg-bench-hist-"))
    hn = int(args.history_rows or max(n // 20, 1000))
    ht = max(hn // 50, 100)
    times = {}
    for days in (5, 60):
        hdb = work / f"day{days}.duckdb"
        last = build_db(hdb, hn, ht, days)
        res = _child(hdb, last)
        times[days] = res["wall_s"]
        stages = {k: v for k, v in res["counts"].items() if k.endswith("_s") and k != "duration_s"}
        print(
            f"day {days}: {hn:,} transactions a day over {ht:,} terminals: "
            f"{times[days]:.2f} s ({res['cpu_s']:.1f} s CPU; "
            + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in stages.items())
            + ")"
        )
    report["history"] = {
        "rows_per_day": hn,
        "terminals": ht,
        "day5_s": round(times[5], 2),
        "day60_s": round(times[60], 2),
        "ratio": round(times[60] / times[5], 2),
    }
    print(f"day-60 / day-5 cost: {times[60] / times[5]:.2f} (target <= 1.3)")
    if args.workdir is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover - the child process of _child
    if len(sys.argv) in (4, 6) and sys.argv[1] == "--_measure":
        _measure(sys.argv[2], sys.argv[3], *sys.argv[4:5], *map(int, sys.argv[5:6]))
