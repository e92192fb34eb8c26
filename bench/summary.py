"""The summary of bench/run_all.sh: every figure of each benchmark's results JSON next
to its target (targets.json) and the previous result, flagged when more than 20% worse.

    python3 bench/summary.py PREVIOUS_DIR RESULTS_DIR TARGETS_JSON NAME...

Whether more is better follows from the figure's name: rates (`per_s`) and ratios
higher, times, latencies and memory lower; other numbers (counts, settings) are shown
without a verdict.

`machine_pace_seconds` (set by run_all.sh) is a fixed reference workload timed just
before the benchmark: when it took more than 20% longer than before the previous run,
the machine was slower, and the benchmark's worse figures are marked so.
"""
import fnmatch
import json
import os
import sys

WORSE = 0.20
# Figures of the machine, not of tributary (its pace, its disk): shown, never flagged.
MACHINE = ("machine_pace_seconds", "disk_write_seconds")


def leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, path + (str(i),))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield ".".join(path), value


def direction(path):
    last = path.split(".")[-1]
    if last in MACHINE:
        return 0
    if last.endswith("bytes_per_change"):
        return -1
    if "per_s" in last or last.startswith("ratio") or last.endswith("_vs_plain"):
        return 1
    if last in ("p50", "p99") or last.endswith(("seconds", "_mib", "_ms")) or "latency" in path:
        if "rate" in last:
            return 0
        return -1
    return 0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.2f}"
    return f"{int(v):,}"


def met(value, target):
    if "min" in target:
        return value >= target["min"], f">= {fmt(target['min'])}"
    return value <= target["max"], f"<= {fmt(target['max'])}"


def main():
    previous_dir, results_dir, targets_path, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    targets = load(targets_path) or {}
    lines = ["| benchmark | figure | now | previous | change | target | |", "|---|---|---|---|---|---|---|"]
    flagged, missed, slower = [], [], []
    for name in names:
        now = load(os.path.join(results_dir, name + ".json"))
        if now is None:
            lines.append(f"| {name} | (no results) | | | | | FAILED |")
            flagged.append(f"{name}: no results")
            continue
        before = dict(leaves(load(os.path.join(previous_dir, name + ".json")) or {}))
        pace, pace_before = now.get("machine_pace_seconds"), before.get("machine_pace_seconds")
        slow = ""
        if pace and pace_before and pace > pace_before * (1 + WORSE):
            slow = f" (machine {pace / pace_before:.1f}x slower)"
            slower.append(f"{name} ({pace} s against {pace_before} s)")
        for path, value in leaves(now):
            machine = path.split(".")[-1] in MACHINE
            d = direction(path)
            old = before.get(path)
            change, mark = "", ""
            if old not in (None, 0) and d != 0:
                delta = (value - old) / abs(old)
                change = f"{delta:+.0%}"
                if d * delta < -WORSE:
                    mark = "WORSE" + slow
                    flagged.append(f"{name} {path}: {fmt(value)} (was {fmt(old)}){slow}")
            target = ""
            for pattern, t in targets.get(name, {}).items():
                if fnmatch.fnmatch(path, pattern):
                    ok, target = met(value, t)
                    if not ok:
                        mark = (mark + " MISSED").strip()
                        missed.append(f"{name} {path}: {fmt(value)} (target {target})")
            if machine and old not in (None, 0):
                change = f"{(value - old) / abs(old):+.0%}"
            elif d == 0 and not target and not machine:
                continue
            lines.append(f"| {name} | {path} | {fmt(value)} | {fmt(old)} | {change} | {target} | {mark} |")
    print("\n".join(lines))
    print()
    print(f"More than {WORSE:.0%} worse than the previous run: " + ("; ".join(flagged) if flagged else "none"))
    print("Targets missed: " + ("; ".join(missed) if missed else "none"))
    if slower:
        print("Taken while the machine was more than 20% slower than for the previous run "
              "(the reference workload's seconds): " + "; ".join(slower))


if __name__ == "__main__":
    main()
