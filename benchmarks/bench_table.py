"""Markdown table of `upsample bench --json` reports: python benchmarks/bench_table.py FILE..."""

import json
import sys


def main(paths: list[str]) -> None:
    print("| model | input | backend | ms/frame | vs eager fp32 | GFLOP/s | of peak | max diff (/255) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        r = json.load(open(path))
        for row in r["rows"]:
            if "ms_per_frame" not in row:
                continue
            gf = f"{row['gflops']:.0f}" if row.get("gflops") else "-"
            pk = f"{100 * row['of_peak']:.0f}% ({row['peak']})" if row.get("of_peak") else "-"
            print(f"| {r['model']} x{r['scale']:g} | {r['size']} | {row['backend']} | "
                  f"{row['ms_per_frame']:.0f} | {row['speedup']:.2f}x | {gf} | {pk} | "
                  f"{255 * row['max_abs_diff']:.2f} |")
    r = json.load(open(paths[0]))
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_gflops"].items())
    cpu = f" ({r['cpu']})" if r.get("cpu") and r["device"] == "cpu" else ""
    print(f"\n{r['device']}{cpu}, {r['threads']} threads; peak GFLOP/s measured by bench (matmul): {peaks}")


if __name__ == "__main__":
    main(sys.argv[1:])
