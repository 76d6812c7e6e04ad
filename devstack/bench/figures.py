"""The figures of ``python -m devstack.bench pipeline``: CPU time of processes, batch histograms from
worker logs, latency and stage statistics of result documents, and the printed table.

Kept apart from the orchestration (devstack/bench/pipeline.py) so each part fits in one reading.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

STAGES = ("decode", "detect", "crop", "classify")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and all its descendants (alive or reaped); None if gone."""
    try:
        import psutil
    except ImportError:
        return _proc_cpu_seconds(pid)
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                c = child.cpu_times()
                total += c.user + c.system  # reaped grandchildren are in children_* above
        return total
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _proc_cpu_seconds(pid: int) -> float | None:
    """/proc fallback (Linux) when psutil is absent: the process and its live children."""
    import os

    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime are fields 14-17 of stat; here counted from after "(comm)".
        return sum(int(v) for v in fields[11:15]) / tick

    try:
        total = own(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += own(int(child))
        return total
    except (OSError, ValueError):
        return None


def pid_of_server(needle: str, port: int) -> int | None:
    """The pid of a local process whose command line holds ``needle`` and ``port`` (moto's server)."""
    try:
        import psutil
    except ImportError:
        return None
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(needle in part for part in cmd) and str(port) in cmd:
            return proc.pid
    return None


#: One client per broker URL for the whole run: connecting sends commands of its own (CLIENT SETINFO),
#: which would count against the stack; the INFO calls the bench itself makes are left out by name.
_REDIS_CLIENTS: dict[str, Any] = {}
OWN_REDIS_COMMANDS = ("info",)


def redis_stats(url: str) -> dict[str, Any] | None:
    """redis-server's own counters: ``{"cpu_s": used_cpu_sys + used_cpu_user, "reads": total_reads_processed,
    "commands": {name: {"calls", "usec"}}}`` from ``INFO cpu``, ``INFO stats`` and ``INFO commandstats``
    (``reads``: the read events of client connections, a round trip each, more for a request over 16 KB);
    None when it cannot be read."""
    try:
        import redis

        client = _REDIS_CLIENTS.get(url)
        if client is None:
            client = _REDIS_CLIENTS[url] = redis.Redis.from_url(url)
        commands = client.info("commandstats")
        cpu = client.info("cpu")
        stats = client.info("stats")
    except Exception:  # noqa: BLE001 - a figure we cannot read is reported as n/a
        return None
    return {"cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "reads": int(stats.get("total_reads_processed", 0)),
            "commands": {name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": int(v["usec"])}
                         for name, v in commands.items() if isinstance(v, dict)}}


def _deltas(start: dict[str, Any], end: dict[str, Any]) -> tuple[dict[str, float], float, float]:
    """(calls by command, command µs, CPU s) between two :func:`redis_stats`, the bench's INFO left out."""
    calls: dict[str, float] = {}
    usec = 0.0
    for name, now in end["commands"].items():
        if name in OWN_REDIS_COMMANDS:
            continue
        before = start["commands"].get(name, {"calls": 0, "usec": 0})
        if now["calls"] > before["calls"]:
            calls[name] = now["calls"] - before["calls"]
            usec += now["usec"] - before["usec"]
    return calls, usec, end["cpu_s"] - start["cpu_s"]


def redis_rate(start: dict[str, Any] | None, end: dict[str, Any] | None, seconds: float) -> dict[str, Any] | None:
    """Per second between two :func:`redis_stats` (the idle stack's cost): calls by command, µs, CPU-µs."""
    if not start or not end or seconds <= 0:
        return None
    calls, usec, cpu_s = _deltas(start, end)
    return {"seconds": seconds, "by_command": {k: v / seconds for k, v in calls.items()},
            "commands": sum(calls.values()) / seconds, "command_usec": usec / seconds, "cpu_us": cpu_s * 1e6 / seconds,
            "round_trips": _reads(start, end) / seconds}


def _reads(start: dict[str, Any], end: dict[str, Any]) -> float:
    """Read events between two :func:`redis_stats` (0 where a server does not count them); the bench's
    own INFO calls are among them (three per snapshot: a handful per window, left in)."""
    return max(0, end.get("reads", 0) - start.get("reads", 0))


def redis_per_image(start: dict[str, Any] | None, end: dict[str, Any] | None, n: int, *,
                    idle: dict[str, Any] | None = None, seconds: float = 0.0) -> dict[str, Any] | None:
    """Per image between two :func:`redis_stats`: commands (total and by command), their command time
    (µs), redis-server CPU-µs, and the broker ceiling: images/s one Redis core carries at that CPU cost.

    With ``idle`` (:func:`redis_rate` of the idle stack) and the window's ``seconds``, what the idle
    stack would have done in that time is left out (never below zero): the cost each image adds, which
    is what bounds the rate (a fixed cost per second does not grow with it). The raw figures stay in
    ``raw``."""
    if not start or not end:
        return None
    n = max(1, n)
    calls, usec, cpu_s = _deltas(start, end)
    reads = _reads(start, end)
    raw = {"commands": sum(calls.values()) / n, "command_usec": usec / n, "cpu_us": cpu_s * 1e6 / n,
           "round_trips": reads / n}
    if idle and seconds > 0:
        calls = {k: max(0.0, v - idle["by_command"].get(k, 0.0) * seconds) for k, v in calls.items()}
        usec = max(0.0, usec - idle["command_usec"] * seconds)
        cpu_s = max(0.0, cpu_s - idle["cpu_us"] * seconds / 1e6)
        reads = max(0.0, reads - idle.get("round_trips", 0.0) * seconds)
    per = {k: v / n for k, v in calls.items() if v > 0}
    cpu_us = cpu_s * 1e6 / n
    return {"commands": sum(per.values()), "by_command": dict(sorted(per.items(), key=lambda kv: -kv[1])),
            "round_trips": reads / n,
            "command_usec": usec / n, "cpu_us": cpu_us, "ceiling_images_per_s": 1e6 / cpu_us if cpu_us > 0 else None,
            "raw": raw, "idle_per_s": idle, "window_s": seconds}


def overhead_ratio(cpu_s_per_image: dict[str, float | None], inprocess_cpu_s: float | None) -> dict[str, Any] | None:
    """Worker CPU-s per image (every detect-/classify-worker row) over the in-process run's: what the
    stack spends per image for each CPU-second the same models spend alone. None if either is missing."""
    workers = [v for name, v in cpu_s_per_image.items() if name.startswith(("detect-worker", "classify-worker"))]
    if not workers or any(v is None for v in workers) or not inprocess_cpu_s:
        return None
    total = sum(workers)
    return {"ratio": total / inprocess_cpu_s, "workers_cpu_s": total, "inprocess_cpu_s": inprocess_cpu_s}


def parse_table(lines: Iterable[str]) -> dict[str, str]:
    """The printed table read back: row name -> value (``| name | value |`` lines; header rows too)."""
    out = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) == 2:
            out[cells[0]] = cells[1]
    return out


def batch_histogram(log_text: str, pattern: str) -> Counter:
    """Counter of the sizes N in log lines matching ``pattern`` (a regex with one group for N)."""
    return Counter(int(m.group(1)) for m in re.finditer(pattern, log_text))


def parse_time(text: str) -> float:
    """Seconds since the epoch of a result's ``processed_at`` (ISO 8601, ``Z``)."""
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def result_figures(docs: dict[str, dict], uploaded_at: dict[str, float]) -> dict[str, Any]:
    """Throughput, latency, queue overhead and per-stage times of the result documents of one run."""
    done = [parse_time(d["processed_at"]) for d in docs.values()]
    latency = {k: parse_time(d["processed_at"]) - uploaded_at[k] for k, d in docs.items()}
    # Time an image spent neither in a model nor in decoding/cropping: queues, transport, S3 calls.
    stage_s = {k: sum(float(v) for name, v in d.get("timings_ms", {}).items() if name != "total") / 1000
               for k, d in docs.items()}
    overhead = [latency[k] - stage_s[k] for k in docs]
    span = max(done) - min(done) if len(done) > 1 else 0.0
    stages = {name: statistics.median(vals) for name in STAGES
              if (vals := [float(d["timings_ms"][name]) for d in docs.values() if name in d.get("timings_ms", {})])}
    wall = len(done) / (max(done) - min(uploaded_at.values())) if done else float("nan")
    return {
        "results": len(docs),
        "status": dict(Counter(d.get("status", "?") for d in docs.values())),
        # Every result of one batch carries one processed_at: a run that fits in one batch has no
        # steady state to time, and its wall-clock rate stands in.
        "e2e_images_per_s": (len(done) - 1) / span if span > 0 else wall,
        "wall_images_per_s": wall,
        "latency_s_median": statistics.median(latency.values()),
        "latency_s_p99": percentile(list(latency.values()), 0.99),
        "queue_overhead_ms_median": 1000 * statistics.median(overhead),
        "stage_ms_median": stages,
    }


def histogram_text(hist: Counter | dict, empty: str) -> str:
    """``"16×9, 15×1"``: batch size × how many batches, largest first."""
    if not hist:
        return empty
    return ", ".join(f"{size}×{count}" for size, count in sorted(((int(k), v) for k, v in hist.items()), reverse=True))


def table_lines(fig: dict[str, Any]) -> list[str]:
    """The benchmark's table (Markdown), from the figures ``devstack.bench.pipeline`` collected."""
    rows: list[tuple[str, str]] = [
        ("images (size)", f"{fig['images']} ({fig['image_size']}), results {_status(fig['status'])}"),
        ("stack", fig["stack"]),
        ("end-to-end images/s (steady: first to last processed_at)", f"{fig['e2e_images_per_s']:.2f}"),
        ("end-to-end images/s (first upload to last result)", f"{fig['wall_images_per_s']:.2f}"),
        ("in-process images/s (fetch + VehiclePipeline, one process)", _maybe(fig["inprocess_images_per_s"])),
        ("efficiency (end-to-end steady / in-process)", _maybe(fig["efficiency"])),
        ("upload → result latency, median / p99 (s)", f"{fig['latency_s_median']:.2f} / {fig['latency_s_p99']:.2f}"),
        ("queue overhead per image, median (ms; latency − stage times)", f"{fig['queue_overhead_ms_median']:.0f}"),
    ]
    for name, ms in fig["stage_ms_median"].items():
        rows.append((f"stage {name}, median ms per image (timings_ms)", f"{ms:.1f}"))
    for name, secs in fig["cpu_s_per_image"].items():
        rows.append((f"CPU-seconds per image: {name}", "n/a" if secs is None else f"{secs:.3f}"))
    inproc = fig.get("inprocess") or {}
    if inproc.get("cpu_s_per_image") is not None:
        rows.append(("CPU-seconds per image: in-process run (same models, one process)",
                     f"{inproc['cpu_s_per_image']:.3f}"))
    over = fig.get("overhead")
    rows.append(("overhead ratio", "n/a (--skip-inprocess)" if over is None else
                 f"{over['ratio']:.2f} (workers {over['workers_cpu_s']:.4f} / in-process {over['inprocess_cpu_s']:.4f} "
                 "CPU-s per image)"))
    red = fig.get("redis_per_image")
    if red is None:
        rows.append(("redis commands per image", "n/a (INFO not readable)"))
    else:
        raw, idle = red.get("raw") or red, red.get("idle_per_s")
        basis = "the idle stack's rate left out" if idle else "idle not measured"
        rows.append(("redis commands per image", f"{red['commands']:.1f} ({basis}; {raw['commands']:.1f} with it)"))
        rows.append(("redis commands per image, by command", ", ".join(
            f"{name} {v:.2f}" for name, v in list(red["by_command"].items())[:14])))
        rows.append(("redis round trips per image", f"{red['round_trips']:.2f} (INFO stats total_reads_processed; "
                                                    f"{basis}; {raw.get('round_trips', 0):.2f} with it)"))
        rows.append(("redis command-µs per image (INFO commandstats)", f"{red['command_usec']:.0f}"))
        rows.append(("redis CPU-µs per image", f"{red['cpu_us']:.0f} (INFO cpu, used_cpu_sys + used_cpu_user; "
                                               f"{basis}; {raw['cpu_us']:.0f} with it)"))
        if idle:
            rows.append(("redis idle stack, per second", f"{idle['commands']:.1f} commands, {idle['cpu_us']:.0f} CPU-µs "
                                                         f"(measured over {idle['seconds']:.1f} s before the upload)"))
        ceiling = red["ceiling_images_per_s"]
        rows.append(("broker ceiling (images/s per Redis core)", f"{ceiling:.0f}" if ceiling else
                     "n/a (no Redis CPU per image beyond the idle stack's: too few images to tell)"))
    s3 = fig.get("s3_requests_per_image")
    rows.append(("S3 requests per image", "n/a (no proxy)" if s3 is None else
                 _requests(s3) + " workers + producer, via proxy"))
    sqs = fig.get("sqs_requests_per_image")
    if sqs is not None:
        rows.append(("SQS broker requests per image", _requests(sqs["broker"]) + " detect + classify queues"))
        rows.append(("SQS event-queue requests per image", _requests(sqs["events"]) + " the producer's S3 events"))
    rows.append(("detect batches (size×count)", histogram_text(fig["detect_batches"], "none logged")))
    rows.append(("classify batches, images (size×count)", histogram_text(fig["classify_batches"], "none logged")))
    rss = fig.get("worker_rss")
    if rss:
        first, last = rss["after_images"]
        for name, (a, b) in rss["mib"].items():
            rows.append((f"RSS MiB of {name} after {first} / {last} images", f"{a:.0f} / {b:.0f} ({(b - a) / a:+.1%})"))
    width = max(len(name) for name, _ in rows)
    out = [f"| {'figure':<{width}} | value |", f"| {'-' * width} | --- |"]
    out += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return out


def _maybe(value: float | None) -> str:
    return "n/a (--skip-inprocess)" if value is None else f"{value:.2f}"


def _status(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _requests(per_method: dict[str, float]) -> str:
    total = sum(per_method.values())
    return f"{total:.2f} (" + ", ".join(f"{m} {v:.2f}" for m, v in sorted(per_method.items())) + ")"


def per_image(deltas: Iterable[tuple[str, float | None]], n: int) -> dict[str, float | None]:
    """name -> CPU seconds per image (None where a process could not be measured)."""
    return {name: None if d is None else d / max(1, n) for name, d in deltas}
