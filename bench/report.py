"""Medians over bench/run.sh runs, and the open loop's latency distribution as an SVG plot.

usage: report.py OUT.svg summary-1.json summary-2.json ...
"""
import json
import math
import statistics
import sys

svg_path, paths = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in paths]
median = statistics.median


def fig(server, mode, key):
    return median(r[server][mode][key] for r in runs)


def ratio(a, b, mode, key):
    """The median of the per-run ratios; NaN where the base has none (the HTTP floor's broker)."""
    ratios = [r[a][mode][key] / r[b][mode][key] for r in runs if r[b][mode][key]]
    if b == "floor" and key in ("broker_cpu_us_per_event", "sent_bytes_per_event"):
        return math.nan
    return median(ratios) if ratios else math.nan


print(f"medians of {len(runs)} runs")
for mode, title in (("closed", "closed loop, the realistic mix, 256 connections"),
                    ("wrk", "wrk, one fixed 700-byte message, 256 connections"),
                    ("open", "open loop, the realistic mix, fixed rate")):
    if mode not in runs[0]["kafka"]:
        continue
    print(f"\n{title}")
    print(f"  {'':16} {'kafka':>9} {'spool':>9} {'floor':>9} {'fl+kafka':>9} {'kafka/fl':>9} {'spool/kafka':>11} {'kafka/fl+k':>10}")
    for label, key, fmt in (("accepted/s", "accepted_per_second", "{:,.0f}"),
                            ("sustained/s", "sustained_per_second", "{:,.0f}"),
                            ("CPU us/event", "cpu_us_per_event", "{:.1f}"),
                            ("p50 ms", "p50_ms", "{:.2f}"), ("p99 ms", "p99_ms", "{:.2f}"),
                            ("p99.9 ms", "p999_ms", "{:.2f}"), ("peak RSS MiB", "peak_rss_mib", "{:.1f}"),
                            ("broker CPU us/ev", "broker_cpu_us_per_event", "{:.1f}"),
                            ("bytes to Kafka/ev", "sent_bytes_per_event", "{:.0f}")):
        if mode not in runs[0]["kafka"] or key not in runs[0]["kafka"][mode]:
            continue
        values = [fmt.format(fig(s, mode, key)) for s in ("kafka", "spool", "floor", "floor_kafka")]
        print(f"  {label:16} {values[0]:>9} {values[1]:>9} {values[2]:>9} {values[3]:>9} "
              f"{ratio('kafka', 'floor', mode, key):>9.2f} {ratio('spool', 'kafka', mode, key):>11.2f} "
              f"{ratio('kafka', 'floor_kafka', mode, key):>10.2f}")

# The median run by kafka mode's open-loop p99, plotted whole.
if "open" not in runs[0]["kafka"]:
    sys.exit(0)
chosen = sorted(runs, key=lambda r: r["kafka"]["open"]["p99_ms"])[len(runs) // 2]
series = {name: chosen[name]["open"]["percentiles"] for name in ("floor", "floor_kafka", "kafka", "spool")}
colors = {"floor": "#888888", "floor_kafka": "#2ca02c", "kafka": "#1f77b4", "spool": "#d62728"}
width, height, left, bottom, top, right = 760, 420, 60, 50, 20, 20
max_ms = max(v for s in series.values() for _, v in s) * 1.05 or 1
x_of = lambda p: left + (width - left - right) * min(math.log10(1 / max(1 - p / 100, 1e-5)), 5) / 5
y_of = lambda ms: height - bottom - (height - top - bottom) * ms / max_ms
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="14" text-anchor="middle">Latency by percentile, open loop at the fixed rate (median run of {len(runs)})</text>']
for k, label in enumerate(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]):
    x = left + (width - left - right) * k / 5
    parts.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{height - bottom}" stroke="#eee"/>')
    parts.append(f'<text x="{x}" y="{height - bottom + 16}" text-anchor="middle">{label}</text>')
for k in range(6):
    ms = max_ms * k / 5
    y = y_of(ms)
    parts.append(f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="#eee"/>')
    parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{ms:.1f}</text>')
parts.append(f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">percentile</text>')
parts.append(f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">latency, ms</text>')
for n, (name, points) in enumerate(series.items()):
    path = " ".join(f"{x_of(p):.1f},{y_of(ms):.1f}" for p, ms in points)
    parts.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" points="{path}"/>')
    parts.append(f'<text x="{left + 10}" y="{top + 16 + 16 * n}" fill="{colors[name]}">{name}</text>')
parts.append("</svg>")
open(svg_path, "w").write("\n".join(parts))
print(f"\nplot: {svg_path}")
