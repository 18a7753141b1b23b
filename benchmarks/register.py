"""Benchmark `hntseg register`: time per case and peak memory of the `fast` and `challenge`
presets on one synthetic case of the paper's median size (512x512x75 at ~0.47x0.47x2 mm).

Each variant runs in its own subprocess. That process first imports ITK and instantiates
the elastix/transformix classes (a one-time cost per process, ~9 s and ~0.9 GiB here),
which is timed and reported on its own line; the per-case time and peak memory exclude it:
time/case is `register_case` alone, and the case's peak is the peak RSS during the case
above the RSS after that load (Linux VmHWM, reset through /proc/self/clear_refs).

The challenge preset (5000 iterations x 3 levels, 10,000 samples) takes far longer than a
2-core machine allows for a quick benchmark, so by default it runs `--challenge-iterations`
iterations per level and its full time is extrapolated from the per-iteration times in
elastix's log (marked "extrapolated"); its time/case, peak and Dice are those of the
truncated run. Use `--challenge-iterations 5000` for the real thing.

    .venv/bin/python benchmarks/register.py            # 512x512x75
    .venv/bin/python benchmarks/register.py --small    # 128x128x32, a quick check

`--quality N` measures what issue #3 asks of `fast` instead: N synthetic patients at the
size, registered with `fast` (and `identity` as the baseline), Dice of each registered
structure of at least 1 mL to the known warp, and whether the similarity improved over
identity; it exits 1 when a structure is below 0.85 or a case did not improve.

    .venv/bin/python benchmarks/register.py --quality 8 --workdir /tmp/q8   # ~15 min
    .venv/bin/python benchmarks/register.py --quality 8 --size 96x96x32 --spacing 1.5x1.5x3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _memory import reset_peak, status_mib  # benchmarks/_memory.py (the script folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load_itk() -> None:
    """Import ITK and instantiate what register_case uses (loads the elastix module)."""
    import itk

    image = itk.Image[itk.F, 3]
    itk.ElastixRegistrationMethod[image, image].New()
    itk.TransformixFilter[image].New()
    itk.ParameterObject.New()
    itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()


def _child(args: argparse.Namespace) -> None:
    """Run one variant on patient 1 and print a JSON line (runs in its own process)."""
    import numpy as np

    from hntseg.cohort import expected_path
    from hntseg.io import array, read_mask
    from hntseg.register import format_parameter_map, lean_itk, read_parameter_file, register_case

    lean_itk()  # as `hntseg register` and its workers load ITK
    rss0 = status_mib()["VmRSS"]
    reset_peak()
    t0 = time.perf_counter()
    _load_itk()
    load_s = time.perf_counter() - t0
    load = status_mib()

    cohort, out = Path(args.cohort), Path(args.out)
    params = None
    if args.variant == "challenge" and args.challenge_iterations != 5000:
        from hntseg.register import preset_path

        m = read_parameter_file(preset_path("challenge"))
        m["MaximumNumberOfIterations"] = [str(args.challenge_iterations)]
        params = [out / "challenge_truncated.txt"]
        out.mkdir(parents=True, exist_ok=True)
        params[0].write_text(format_parameter_map(m))
    reset_peak()
    start = time.perf_counter()
    result = register_case(
        expected_path(cohort, "1", "preRT_T2"),
        expected_path(cohort, "1", "preRT_mask"),
        expected_path(cohort, "1", "midRT_T2"),
        out,
        "1",
        preset=args.variant,
        params=params,
        seed=1,
        threads=args.threads,
        force=True,
    )
    wall = time.perf_counter() - start
    case_peak = status_mib()["VmHWM"]
    got = array(read_mask(expected_path(out, "1", "preRT_mask_registered")))
    ref = array(read_mask(expected_path(cohort, "1", "preRT_mask_registered")))
    dice = {}
    for label, name in ((1, "GTVp"), (2, "GTVn")):
        a, b = got == label, ref == label
        if b.any():
            dice[name] = round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)
    iter_ms = _iteration_times(out / "1" / "elastix" / "elastix.log")
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                "case_peak_increase_mib": case_peak - load["VmRSS"],
                "load_s": load_s,
                "load_peak_increase_mib": load["VmHWM"] - rss0,
                "rss_after_load_mib": load["VmRSS"],
                "dice": dice,
                "iter_ms": iter_ms,
                "nmi": result.similarity["registered"]["nmi"] if result.similarity else None,
            }
        ),
        flush=True,
    )
    del np


def _iteration_times(log: Path) -> list[float]:
    """Mean time per iteration (ms) in each resolution, from elastix's iteration table."""
    if not log.is_file():
        return []
    out, current = [], []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("Time spent in resolution"):
            out.append(sum(current[1:]) / max(1, len(current) - 1))  # iteration 0 estimates
            current = []
        elif re.match(r"^\d+\t", line):
            try:
                current.append(float(line.split("\t")[-1]))
            except ValueError:
                pass
    return out


def _quality(
    args: argparse.Namespace,
    size: tuple[int, int, int],
    spacing: tuple[float, float, float] | None,
    work: Path,
) -> int:
    """Register N synthetic patients with fast and identity; score against the known warp."""
    import numpy as np

    from hntseg.cohort import expected_path
    from hntseg.io import read_mask
    from hntseg.register import dice_per_label, register_cohort
    from hntseg.synth import synth_cohort

    cohort = work / "cohort"
    t0 = time.perf_counter()
    truths = synth_cohort(cohort, patients=args.quality, seed=0, size=size, spacing=spacing)
    spacing = tuple(truths[0]["preRT_grid"]["spacing_xyz_mm"])
    print(
        f"{args.quality} synthetic patients, {size[0]}x{size[1]}x{size[2]} voxels at "
        f"{'x'.join(f'{v:g}' for v in spacing)} mm: ready in {time.perf_counter() - t0:.0f} s"
    )
    workers = args.workers or 1
    methods = ("identity", "elastix")
    for method in methods:
        t0 = time.perf_counter()
        results = register_cohort(
            cohort,
            work / method,
            method=method,
            preset="fast",
            seed=0,
            threads=args.threads,
            workers=workers,
            force=args.force,
        )
        print(
            f"{'fast' if method == 'elastix' else method}: {len(results)} cases in "
            f"{time.perf_counter() - t0:.0f} s wall ({workers} worker(s))"
        )
    print(
        f"\n{'patient':>7} {'structure':>9} {'mL':>6} {'identity':>9} {'fast':>6} "
        f"{'NMI identity -> fast':>22} {'s/case':>7}"
    )
    scores, not_improved = [], []
    for t in truths:
        pid = t["id"]
        truth = read_mask(expected_path(cohort, pid, "preRT_mask_registered"))
        dice = {
            m: dice_per_label(
                read_mask(expected_path(work / m, pid, "preRT_mask_registered")), truth
            )
            for m in methods
        }
        rec = json.loads((work / "elastix" / pid / "register.record.json").read_text())
        sim = rec["similarity"]
        if not sim.get("improved"):
            not_improved.append(pid)
        for name, vol in t["volumes_ml"].items():
            ml = vol["preRT_registered"]
            if ml < 1.0:
                continue
            d = dice["elastix"][name] or 0.0
            scores.append(d)
            print(
                f"{pid:>7} {name:>9} {ml:>6.1f} {dice['identity'][name] or 0:>9.3f} {d:>6.3f} "
                f"{sim['identity']['nmi']:>10.3f} -> {sim['registered']['nmi']:.3f} "
                f"{rec['runtime_s']:>7.1f}"
            )
    v = np.asarray(scores)
    below = int((v < 0.85).sum())
    print(
        f"\nfast, {len(v)} structures of >= 1 mL: Dice to the known warp min {v.min():.3f}, "
        f"mean {v.mean():.3f}; below 0.85: {below}; similarity improved over identity: "
        f"{len(truths) - len(not_improved)} of {len(truths)} cases"
    )
    ok = below == 0 and not not_improved
    print(
        "issue #3 criterion (>= 0.85 for every structure of >= 1 mL, similarity improved):",
        "met" if ok else "NOT met",
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="128x128x32 instead of 512x512x75")
    parser.add_argument("--size", default=None, help="X x Y x Z voxels (default 512x512x75)")
    parser.add_argument("--challenge-iterations", type=int, default=None,
                        help="iterations per level for challenge (default 100, --small 50); "
                        "the full 5000 is extrapolated")  # fmt: skip
    parser.add_argument("--variants", default="fast,challenge")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--quality",
        type=int,
        default=None,
        metavar="N",
        help="score fast against the known warp on N patients (see above)",
    )
    parser.add_argument("--workers", type=int, default=None, help="--quality: cases at a time")
    parser.add_argument(
        "--workdir", default=None, help="--quality: keep the cohort and registrations here (reused)"
    )
    parser.add_argument("--force", action="store_true", help="--quality: redo registrations")
    parser.add_argument("--spacing", default=None,
                        help="--quality: X x Y x Z mm (default: 240x240x150 mm field)")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cohort", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.challenge_iterations is None:
        args.challenge_iterations = 50 if args.small else 100
    if args.challenge_iterations < 1:
        parser.error("--challenge-iterations must be >= 1")
    if args.quality is not None and args.quality < 1:
        parser.error("--quality must be >= 1 (patients)")
    if args.child:
        _child(args)
        return

    from hntseg.synth import parse_size, parse_spacing, synth_cohort

    size = parse_size(args.size or ("128x128x32" if args.small else "512x512x75"))
    if args.quality is not None:
        sp = parse_spacing(args.spacing) if args.spacing else None
        if args.workdir:
            sys.exit(_quality(args, size, sp, Path(args.workdir)))
        with tempfile.TemporaryDirectory(prefix="hntseg-bench-register-") as tmp:
            sys.exit(_quality(args, size, sp, Path(tmp)))
    spacing = tuple(round(f / n, 4) for f, n in zip((240.0, 240.0, 150.0), size, strict=True))
    with tempfile.TemporaryDirectory(prefix="hntseg-bench-register-") as tmp:
        cohort = Path(tmp) / "cohort"
        t0 = time.perf_counter()
        synth_cohort(cohort, patients=1, seed=0, size=size, spacing=spacing)
        print(f"synthetic case {size[0]}x{size[1]}x{size[2]} voxels at "
              f"{spacing[0]}x{spacing[1]}x{spacing[2]} mm: made in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        rows = []
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--child", "1", "--variant", variant,
                   "--cohort", str(cohort), "--out", str(Path(tmp) / variant),
                   "--challenge-iterations", str(args.challenge_iterations)]  # fmt: skip
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{variant}: failed\n{proc.stderr[-2000:]}")
                continue
            res = json.loads(line[0][7:])
            its = args.challenge_iterations if variant == "challenge" else None
            full = res["wall_s"]
            if its is not None and its < 5000 and res["iter_ms"]:
                full += sum((5000 - its) * ms / 1000.0 for ms in res["iter_ms"])
            rows.append((variant, res, its, full))
        print()
        if rows:
            print(
                "ITK/elastix load, once per process, before the timer (excluded below): "
                + "; ".join(
                    f"{v} {r['load_s']:.1f} s, peak +{r['load_peak_increase_mib']:.0f} MiB, "
                    f"RSS after {r['rss_after_load_mib']:.0f} MiB"
                    for v, r, _, _ in rows
                )
            )
            print(
                "time/case = register_case alone; case peak = peak RSS during the case above "
                "the RSS after the load"
            )
        print(f"{'preset':<10} {'ran':>16} {'time/case s':>12} {'full preset s':>22} "
              f"{'case peak +MiB':>15} {'ms/iter by level':>18}  Dice to truth")  # fmt: skip
        for variant, res, its, full in rows:
            truncated = its is not None and its < 5000
            ran = f"{its} it/level" if truncated else "full preset"
            full_s = f"{full:.0f} (extrapolated)" if truncated else f"{full:.0f}"
            per_iter = "/".join(f"{v:.0f}" for v in res["iter_ms"])
            dice = ", ".join(f"{k} {v:.3f}" for k, v in res["dice"].items())
            dice += f" (from the {its} it/level run)" if truncated else ""
            print(f"{variant:<10} {ran:>16} {res['wall_s']:>12.1f} {full_s:>22} "
                  f"{res['case_peak_increase_mib']:>15.0f} {per_iter:>18}  {dice}")  # fmt: skip
        full_by_name = {variant: full for variant, _, _, full in rows}
        if {"fast", "challenge"} <= full_by_name.keys():
            how = "measured" if args.challenge_iterations >= 5000 else "challenge extrapolated"
            ratio = full_by_name["challenge"] / full_by_name["fast"]
            print(f"\nfast vs challenge (full presets, {how}): fast {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
