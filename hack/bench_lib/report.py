"""The benchmark report: a markdown table (stdout and a file) and a JSON of the raw samples."""
from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

from .memory import MIB
from .steady import LOAD_OPS, RAMP_OPS
from .workload import DENSITY_OPS, LIFECYCLE_OPS, PULL_IMAGES, Results, percentile

# Targets from the issue: pycri/containerd ratio of the median, at most this.
RATIO_TARGETS = {
    "PullImage[multilayer]": 1.0, "PullImage[busybox]": 1.0,
    "RunPodSandbox": 0.5, "CreateContainer": 1.0, "StartContainer": 0.2,
    "ExecSync[true]": 0.5, "ExecSync[echo hi]": 0.5, "StopPodSandbox": 0.5,
}
LIST_P99_TARGET_MS = 20.0
POD_PRIVATE_TARGET_MIB = 3.0
IDLE_RSS_TARGET_MIB = 60.0

OPS = [f"PullImage[{n}]" for n in PULL_IMAGES] + list(LIFECYCLE_OPS)


def _ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1000:.1f}" if x >= 0.01 else f"{x * 1000:.2f}"


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / MIB:.2f}"


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def latency_table(results: list[Results]) -> list[str]:
    by = {r.runtime: r for r in results}
    ctd, py = by.get("containerd"), by.get("pycri")
    cols = ["operation"]
    for r in results:
        cols += [f"{r.runtime} median ms", f"{r.runtime} p95 ms"]
    both = ctd is not None and py is not None
    if both:
        cols += ["ratio pycri/containerd (median)"]
    cols += ["target ratio"] + (["met"] if both else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for op in OPS:
        row = [op]
        for r in results:
            s = r.stats(op)
            row += [_ms(s["median"]), _ms(s["p95"])] if s else ["n/a", "n/a"]
        target = RATIO_TARGETS.get(op)
        if both:
            cs, ps = ctd.stats(op), py.stats(op)
            ratio = ps["median"] / cs["median"] if cs and ps and cs["median"] > 0 else None
            row.append("n/a" if ratio is None else f"{ratio:.2f}")
        row.append(f"<= {target}" if target is not None else "")
        if both:
            row.append(_met(ratio <= target) if (target is not None and ratio is not None) else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def density_table(results: list[Results]) -> list[str]:
    lines = ["| runtime | operation | n | p50 ms | p95 ms | p99 ms | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for op in DENSITY_OPS:
            s = r.stats(op)
            if not s:
                lines.append(f"| {r.runtime} | {op} | 0 | n/a | n/a | n/a | | |")
                continue
            tgt = op.startswith("ListContainers")
            lines.append(f"| {r.runtime} | {op} | {s['n']} | {_ms(s['median'])} | {_ms(s['p95'])} | {_ms(s['p99'])} | "
                         f"{f'p99 < {LIST_P99_TARGET_MS:.0f} ms' if tgt else ''} | "
                         f"{_met(s['p99'] * 1000 < LIST_P99_TARGET_MS) if tgt else ''} |")
    return lines


def memory_rows(r: Results) -> dict[str, tuple[str, str, bool | None]]:
    """metric -> (value MiB, target text, met)"""
    m = r.memory
    rows = {}
    for key, label in (("daemon_fresh", "daemon RSS, idle (just started)"),
                       ("daemon_idle", "daemon RSS, idle (after the workload, no pods)"),
                       ("daemon_110_pods", "daemon RSS, 110 pods")):
        v = m.get(key, {}).get("rss")
        tgt = key != "daemon_110_pods"
        rows[label] = (_mib(v), f"<= {IDLE_RSS_TARGET_MIB:.0f}" if tgt else "",
                       (v / MIB <= IDLE_RSS_TARGET_MIB) if (tgt and v) else None)
        tree = m.get(key, {})
        rows[f"{label.replace('daemon RSS', 'daemon + helpers RSS (processes)')}"] = (
            f"{_mib(tree.get('tree_rss'))} ({len(tree.get('pids', []))})" if tree else "n/a", "", None)
    pp = m.get("per_pod", {})
    priv = pp.get("private_bytes") or []
    med = statistics.median(priv) if priv else None
    rows["private memory per pod, median (runtime's per-pod processes)"] = (
        _mib(med), f"<= {POD_PRIVATE_TARGET_MIB:.0f}", (med / MIB <= POD_PRIVATE_TARGET_MIB) if med else None)
    rows["private memory per pod, p95"] = (_mib(percentile(priv, 0.95)) if priv else "n/a", "", None)
    pss = pp.get("pss_bytes") or []
    rows["Pss per pod, median"] = (_mib(statistics.median(pss)) if pss else "n/a", "", None)
    rss = pp.get("rss_bytes") or []
    rows["RSS per pod, median (shared pages counted in full)"] = (
        _mib(statistics.median(rss)) if rss else "n/a", "", None)
    procs = pp.get("overhead_processes") or []
    rows["runtime processes per pod"] = (f"{statistics.median(procs):g}" if procs else "n/a", "", None)
    app = pp.get("app_private_bytes") or []
    rows["app container (sleep) private, median (not overhead)"] = (
        _mib(statistics.median(app)) if app else "n/a", "", None)
    return rows


def memory_table(results: list[Results]) -> list[str]:
    cols = ["metric (MiB)"] + [r.runtime for r in results] + ["target"] + (["met (pycri)"] if len(results) > 1 else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    per = {r.runtime: memory_rows(r) for r in results}
    for metric in memory_rows(results[0]):
        vals = [per[r.runtime][metric][0] for r in results]
        target = per[results[0].runtime][metric][1]
        row = [metric] + vals + [target]
        if len(results) > 1:
            row.append(_met(per["pycri"][metric][2]) if "pycri" in per else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def missing_notes(results: list[Results], skip_110: bool = False) -> list[str]:
    out = []
    for r in results:
        for op in OPS + list(DENSITY_OPS):
            if skip_110 and op in DENSITY_OPS:
                continue
            if not r.samples.get(op):
                out.append(f"- {r.runtime}: {op}: {r.why_missing(op)}")
        for op, errs in r.errors.items():
            if errs and r.samples.get(op):
                out.append(f"- {r.runtime}: {op}: {len(errs)} failed calls/checks, last: {errs[-1][:120]}")
        if r.memory.get("density_error"):
            out.append(f"- {r.runtime}: density phase: {r.memory['density_error'][:160]}")
    return out


def render(results: list[Results], meta: dict) -> str:
    lines = [f"# pycri vs containerd: CRI benchmark, {meta['date']}", ""]
    lines += [f"- machine: {meta['machine']}",
              f"- command: `{meta['command']}`",
              f"- iterations: {meta['iterations']} per operation (+{meta['warmup']} warm-up not counted); "
              f"density: {'skipped' if meta['skip_110'] else '110 pods, one `sleep` container each'}"]
    for r in results:
        load = ""
        if "loadavg_before" in r.memory:
            load = (f"; load average (1/5/15 min) {' '.join(r.memory['loadavg_before'])} before, "
                    f"{' '.join(r.memory.get('loadavg_after', []))} after")
        lines.append(f"- {r.runtime}: {r.version}{load}")
    lines += ["", "## Latency per CRI call (client-side wall time over the unix socket)", ""]
    lines += latency_table(results)
    lines += ["", "## 110 pods running", ""]
    lines += density_table(results) if not meta.get("skip_110") else ["skipped (--skip-110)"]
    lines += ["", "## Memory", ""]
    lines += memory_table(results)
    miss = missing_notes(results, meta.get("skip_110", False))
    if miss:
        lines += ["", "## Not measured / errors", ""] + miss
    notes = [f"- {r.runtime}: {n}" for r in results for n in r.notes if not n.startswith("Version")]
    ramp = [f"- {r.runtime}: 110 pods started one after another in {r.memory['density_ramp_seconds']} s"
            for r in results if "density_ramp_seconds" in r.memory]
    if notes or ramp:
        lines += ["", "## Notes", ""] + ramp + notes
    return "\n".join(lines) + "\n"


def write(results: list[Results], meta: dict, out_md: Path) -> Path:
    out_md.parent.mkdir(parents=True, exist_ok=True)
    text = render(results, meta)
    out_md.write_text(text)
    out_json = out_md.with_suffix(".json")
    out_json.write_text(json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=1) + "\n")
    return out_json


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    cg = "cgroup v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "cgroup v1"
    return f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, {mem}, {cg}"


# ---------------------------------------------------------------- hack/bench_steady.py

# Issue #24's targets: ratio pycri/containerd at most this (of the median over runs of the p50, or of the p99).
STEADY_P50_TARGETS = {"ListContainers": 1.0, "ListPodSandbox": 1.0, "ContainerStatus": 1.0, "PodSandboxStatus": 1.0}
STEADY_P99_TARGETS = {"relist": 1.0}
STEADY_CPU_TARGET = 0.25
STEADY_RAMP_TARGET = 0.5


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _ratio(p: float | None, c: float | None) -> float | None:
    return p / c if p is not None and c else None


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def steady_call_stats(runs: list[Results], op: str) -> dict | None:
    """The median over runs of each run's p50, p95 and p99 of `op`, and the calls counted in all runs."""
    per = [s for r in runs if (s := r.stats(op))]
    if not per:
        return None
    return {"n": sum(s["n"] for s in per), "p50": _median([s["median"] for s in per]),
            "p95": _median([s["p95"] for s in per]), "p99": _median([s["p99"] for s in per])}


def steady_resources(runs: list[Results]) -> dict[str, float | None]:
    """metric -> median over runs."""
    def med(fn):
        vals = []
        for r in runs:
            try:
                vals.append(fn(r.memory))
            except (KeyError, TypeError, IndexError):
                pass
        return _median(vals)

    return {
        "time to all pods running (s)": med(lambda m: m["ramp_s"]),
        "pods running after the ramp": med(lambda m: m["pods_running"]),
        "runtime CPU over the window (s)": med(lambda m: m["cpu"]["total_s"]),
        "  daemon itself (s)": med(lambda m: m["cpu"]["daemon_own_s"]),
        "  daemon's reaped children (s)": med(lambda m: m["cpu"]["daemon_children_s"]),
        "  daemon's helpers (s)": med(lambda m: m["cpu"]["helper_s"]),
        "  per-pod processes, reaped children included (s)": med(lambda m: m["cpu"]["pod_s"]),
        "runtime CPU, % of one core": med(lambda m: 100 * m["cpu"]["total_s"] / m["cpu"]["seconds"]),
        "runtime processes at the end of the window": med(lambda m: m["cpu"]["processes_end"]),
        "runtime processes that ended in the window": med(lambda m: m["cpu"]["processes_ended"]),
        "daemon RSS (MiB)": med(lambda m: m["daemon_steady"]["rss"] / MIB),
        "daemon + helpers private (MiB)": med(lambda m: m["daemon_steady"]["tree_private"] / MIB),
        "private memory per pod, median (MiB)": med(lambda m: statistics.median(m["per_pod"]["private_bytes"]) / MIB),
        "private memory, daemon + helpers + all pods (MiB)": med(
            lambda m: (m["daemon_steady"]["tree_private"] + sum(m["per_pod"]["private_bytes"])) / MIB),
        "pod teardown through CRI (s)": med(lambda m: m["teardown_s"]),
        "client CPU over the window (s)": med(lambda m: m["client_cpu_s"]),
        "client CPU per call (ms)": med(lambda m: m["client_cpu_ms_per_call"]),
        "machine CPU busy over the window, all processes (s)": med(lambda m: m["cpu"]["machine_busy_s"]),
        "client dispatch lag p99 (ms)": med(lambda m: m["dispatch_lag_ms"]["p99"]),
        "task runs skipped (previous call still out)": med(lambda m: sum(m["task_skipped"].values())),
    }


LAG_LIMIT_MS = 100.0


def fell_behind(m: dict, seconds: float) -> str:
    """Why a run's figures are not quite those of the offered load ("" when they are): the client could not start
    calls on time or the window stretched (the machine was saturated), or task runs were skipped because their
    previous call was still out (that call took longer than its period)."""
    lag = (m.get("dispatch_lag_ms") or {}).get("p99", 0)
    skipped = {k: v for k, v in (m.get("task_skipped") or {}).items() if v}
    window = (m.get("cpu") or {}).get("seconds", seconds)
    out = []
    if lag > LAG_LIMIT_MS or window > seconds * 1.2:
        out.append(f"the client could not keep the schedule (dispatch lag p99 {lag:.0f} ms, window {window:.0f} s "
                   f"for {seconds:.0f} s): the machine was saturated, so these are the figures of an overloaded "
                   "node, not of the offered load")
    if skipped:
        out.append("task runs skipped because their previous call was still out: "
                   + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    return "; ".join(out)


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.0f}" if abs(x) >= 100 else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}")


def render_steady(entries: list[dict], meta: dict) -> str:
    """entries: {"runtime", "pods", "run", "results": Results} per runtime, pod count and run."""
    names = [n for n in ("containerd", "pycri") if any(e["runtime"] == n for e in entries)]
    both = len(names) == 2
    lines = [f"# Steady state (a kubelet's load): pycri vs containerd, {meta['date']}", "",
             f"- machine: {meta['machine']}", f"- command: `{meta['command']}`",
             f"- {meta['seconds']:.0f} s of load per run; {meta['runs']} run(s) per runtime and pod count, the "
             f"runtimes alternating; figures are medians over the runs (of each run's p50/p95/p99)",
             f"- ramp: {meta['concurrency']} pods at a time; load: relist every 1 s, stats every 10 s, per pod every "
             "10 s an ExecSync `true` and a PodSandboxStatus + ContainerStatus, spread evenly"]
    versions = {e["runtime"]: e["results"].version for e in entries}
    lines += [f"- {n}: {versions[n]}" for n in names]
    targets, notes = [], []
    for pods in meta["pods"]:
        group = {n: [e["results"] for e in entries if e["runtime"] == n and e["pods"] == pods] for n in names}
        lines += ["", f"## {pods} pods", "", "Latency per call under the load, ms (client-side wall time):", ""]
        cols = ["call"]
        for n in names:
            cols += [f"{n} n", f"{n} p50", f"{n} p95", f"{n} p99"]
        if both:
            cols += ["ratio p50", "ratio p95", "ratio p99"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for op in LOAD_OPS + RAMP_OPS:
            st = {n: steady_call_stats(group[n], op) for n in names}
            if not any(st.values()):
                continue
            row = [op]
            for n in names:
                s = st[n]
                row += [str(s["n"]), _ms(s["p50"]), _ms(s["p95"]), _ms(s["p99"])] if s else ["0", "n/a", "n/a", "n/a"]
            if both:
                c, p = st["containerd"], st["pycri"]
                rs = {q: _ratio(p and p[q], c and c[q]) for q in ("p50", "p95", "p99")}
                row += [_fmt_ratio(rs[q]) for q in ("p50", "p95", "p99")]
                for tgt, q in ((STEADY_P50_TARGETS, "p50"), (STEADY_P99_TARGETS, "p99")):
                    if op in tgt and rs[q] is not None:
                        targets.append(f"| {pods} | {op} {q} | <= {tgt[op]} | {rs[q]:.2f} | {_met(rs[q] <= tgt[op])} |")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Resources (runtime CPU: every process of the runtime, reaped children included, over the load "
                  "window; the method is in hack/bench_lib/cpu.py; memory after the window, hack/bench_lib/memory.py):",
                  ""]
        cols = ["metric"] + names + (["ratio pycri/containerd"] if both else [])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        res = {n: steady_resources(group[n]) for n in names}
        for metric in res[names[0]]:
            row = [metric] + [_num(res[n][metric]) for n in names]
            if both:
                r = _ratio(res["pycri"][metric], res["containerd"][metric])
                row.append(_fmt_ratio(r))
                for label, tgt in (("runtime CPU over the window (s)", STEADY_CPU_TARGET),
                                   ("time to all pods running (s)", STEADY_RAMP_TARGET)):
                    if metric == label and r is not None:
                        targets.append(f"| {pods} | {metric} | <= {tgt} | {r:.2f} | {_met(r <= tgt)} |")
            lines.append("| " + " | ".join(row) + " |")
        for n in names:
            for i, r in enumerate(group[n]):
                notes += [f"- {n} @{pods}, run {i + 1}: {x}" for x in r.notes if not x.startswith("Version")]
                if behind := fell_behind(r.memory, meta["seconds"]):
                    notes.append(f"- {n} @{pods}, run {i + 1}: {behind}")
                for op, errs in r.errors.items():
                    if errs:
                        notes.append(f"- {n} @{pods}, run {i + 1}: {op}: {len(errs)} failed, last: {errs[-1][:120]}")
    if targets:
        lines += ["", "## Issue #24's targets (ratio pycri/containerd)", "",
                  "| pods | figure | target | ratio | met |", "|---|---|---|---|---|"] + targets
    if notes:
        lines += ["", "## Notes and errors", ""] + notes
    return "\n".join(lines) + "\n"


def write_steady(entries: list[dict], meta: dict, out_md: Path) -> tuple[str, Path]:
    out_md.parent.mkdir(parents=True, exist_ok=True)
    text = render_steady(entries, meta)
    out_md.write_text(text)
    out_json = out_md.with_suffix(".json")
    out_json.write_text(json.dumps({"meta": meta, "runs": [
        {"runtime": e["runtime"], "pods": e["pods"], "run": e["run"], **e["results"].to_json()} for e in entries]},
        indent=1) + "\n")
    return text, out_json
