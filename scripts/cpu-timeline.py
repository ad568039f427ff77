#!/usr/bin/env python3
"""Which thread ran on which CPU during each burst of work: the view behind docs/BENCHMARKS.md,
"One core does the server's part, the other the members'" (twelfth session).

Record the whole machine for a few seconds of a steady run, e.g. while `lanes bench fanout`
runs against a separate `lanes serve`:

    perf record -a -F 2999 -o perf.data -- sleep 4
    perf script -i perf.data -F comm,pid,tid,cpu,time \
        | scripts/cpu-timeline.py --pid S=<server pid> --pid B=<bench pid>

Each burst (samples of anything but the idle task, with no gap longer than --gap-ms) is printed
as one row per CPU of --bin-ms bins. A bin shows a letter per sample: the pid's label, upper
case for the busiest thread of that process and lower case for the others; `.` is idle and `o`
any other process. Reads standard input; writes standard output.
"""

import argparse
import collections
import sys


def parse(lines):
    """(time s, cpu, pid, tid, comm) per sample of `perf script -F comm,pid,tid,cpu,time`."""
    for line in lines:
        fields = line.split()
        # comm may contain spaces: the last three fields are pid/tid, [cpu] and time:.
        if len(fields) < 4 or "/" not in fields[-3]:
            continue
        try:
            pid, tid = fields[-3].split("/")
            cpu = int(fields[-2].strip("[]"))
            time = float(fields[-1].rstrip(":"))
        except ValueError:
            continue
        yield time, cpu, pid, tid, " ".join(fields[:-3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", action="append", default=[], metavar="LABEL=PID",
                        help="a process to mark with LABEL (one letter); repeatable")
    parser.add_argument("--bin-ms", type=float, default=0.5)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--bursts", type=int, default=5, help="bursts to print")
    parser.add_argument("--min-samples", type=int, default=20,
                        help="shorter bursts are skipped")
    args = parser.parse_args()
    labels = {}
    for entry in args.pid:
        label, _, pid = entry.partition("=")
        if len(label) != 1 or not pid:
            parser.error(f"--pid wants LABEL=PID with a one-letter label, got {entry!r}")
        labels[pid] = label

    samples = sorted(parse(sys.stdin))
    if not samples:
        sys.exit("no samples on standard input (perf script -F comm,pid,tid,cpu,time)")
    # The busiest thread of each labelled process gets the upper-case letter.
    per_thread = collections.Counter((pid, tid) for _, _, pid, tid, comm in samples
                                     if pid in labels and comm != "swapper")
    busiest = {}
    for (pid, tid), _ in per_thread.most_common():
        busiest.setdefault(pid, tid)

    def mark(pid, tid, comm):
        if comm == "swapper" or pid == "0":
            return "."
        if pid not in labels:
            return "o"
        return labels[pid].upper() if busiest.get(pid) == tid else labels[pid].lower()

    busy = [s for s in samples if s[4] != "swapper" and s[2] != "0"]
    bursts, current = [], []
    for sample in busy:
        if current and (sample[0] - current[-1][0]) * 1000 > args.gap_ms:
            bursts.append(current)
            current = []
        current.append(sample)
    if current:
        bursts.append(current)
    shown = [b for b in bursts if len(b) >= args.min_samples][: args.bursts]
    cpus = sorted({s[1] for s in samples})
    for burst in shown:
        start, end = burst[0][0], burst[-1][0]
        bins = int((end - start) * 1000 / args.bin_ms) + 1
        grid = {(cpu, b): "" for cpu in cpus for b in range(bins)}
        for time, cpu, pid, tid, comm in samples:
            if start <= time <= end:
                grid[(cpu, int((time - start) * 1000 / args.bin_ms))] += mark(pid, tid, comm)
        print(f"burst of {(end - start) * 1000:.1f} ms ({len(burst)} busy samples)")
        for cpu in cpus:
            row = " ".join(grid[(cpu, b)] or "_" for b in range(bins))
            print(f"  cpu {cpu}: {row}")


if __name__ == "__main__":
    main()
