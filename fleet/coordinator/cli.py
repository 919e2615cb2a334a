"""``fleet``: the coordinator's command line.

    fleet run [EXPERIMENT.yaml] [--address ADDR] [--runs-dir runs]   run an experiment
    fleet run --resume RUN_DIR                                        finish a stopped run
    fleet plan [EXPERIMENT.yaml]                                      list its trials, run nothing
    fleet summary RUN_DIR                                             re-print a run's summary
    fleet report RUN_DIR [-o FILE]                                    write the HTML comparison
    fleet dashboards build [--out dashboards]                         write the Grafana JSON
    fleet dashboards push --grafana-url URL [--token T]               create/update in Grafana
    fleet targets prune FILE                                          drop ended runs' targets
    fleet profile capture RUN_DIR -o FILE [--name N] [--model M]     a simulated phone's profile
    fleet certs ca|issue ...                                          a lab CA, agent certificates
    fleet devices [--json] [--address auto] | prepare SERIAL | emulate N   adb phones
    fleet runs [--runs-dir runs] [--json]                             list runs, newest first
    fleet compare RUN_A RUN_B [--json]                                paradigm figures, deltas
    fleet export RUN_DIR [--format csv|parquet|jsonl] [--out DIR]     every table as files

Exit codes: 0 all trials completed; 1 the run finished with failed trials (or a push failed);
2 bad input (checked before anything starts); 3 ``fleet summary`` of a run that was interrupted
or stopped; 130/143 ``fleet run`` stopped by SIGINT/SIGTERM (resume it with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_FAILED_TRIALS = 1
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}
EXIT_CODES = """exit codes:
  0    all trials completed (or the command did what it was asked)
  1    the run finished with failed trials; a push, a device command or an export failed
  2    bad input, checked before anything starts (the message names the file and field)
  3    `fleet summary` of a run that was stopped or interrupted (resume it)
  130  `fleet run` stopped by SIGINT (resume it with --resume)
  143  `fleet run` stopped by SIGTERM (resume it with --resume)"""


def _parser() -> argparse.ArgumentParser:
    from fleet import __version__

    p = argparse.ArgumentParser(
        prog="fleet",
        description="On-device SLM fleet testbed.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: the embedded default)")
    run.add_argument("experiment", nargs="?", help="experiment YAML file")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="finish a stopped or crashed run: its completed trials are kept, the rest run",
    )
    run.add_argument("--address", help="join an existing Ray cluster (default: start one)")
    talk = run.add_mutually_exclusive_group()
    talk.add_argument(
        "-v", "--verbose", action="store_true", help="the run log (fleet.log) at DEBUG level"
    )
    talk.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, no per-trial lines; the result"
    )
    run.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where run directories go (runs)"
    )
    run.add_argument("--run-id", help="name of the run directory (default: time-name-random)")
    run.add_argument(
        "--allow-shared-cores",
        action="store_true",
        help="run trials of phones sharing a host's cores at once (noted in results)",
    )
    prom = run.add_mutually_exclusive_group()
    prom.add_argument("--prometheus-url", help="use this Prometheus instead of starting one")
    prom.add_argument("--no-prometheus", action="store_true", help="start no Prometheus")
    run.add_argument(
        "--keep-prometheus",
        action="store_true",
        help="leave the embedded Prometheus running after the run",
    )
    run.add_argument(
        "--targets-file",
        type=Path,
        help="also write this run's scrape targets into FILE (file_sd JSON, shared with other "
        "runs under a lock), where a standing Prometheus reads them",
    )
    run.add_argument(
        "--targets-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep an ended run's entries in --targets-file this long (60), then drop them",
    )
    plan = sub.add_parser("plan", help="list an experiment's trials without running them")
    plan.add_argument("experiment", nargs="?", help="experiment YAML file (default: embedded)")
    summary = sub.add_parser("summary", help="print the summary of a finished run")
    summary.add_argument("run_dir", type=Path, help="the run (runs/<run-id>)")
    report = sub.add_parser("report", help="write the HTML paradigm comparison of a run")
    report.add_argument("run_dir", type=Path, help="the run (runs/<run-id>)")
    report.add_argument("-o", "--output", type=Path, help="default: RUN_DIR/report.html")
    boards = sub.add_parser("dashboards", help="build or push the Grafana dashboards")
    bsub = boards.add_subparsers(dest="action", required=True)
    build = bsub.add_parser(
        "build", help="write dashboards/*.json from fleet/observe/dashboards.py"
    )
    build.add_argument(
        "--out", type=Path, default=Path("dashboards"), help="folder for the JSON (dashboards)"
    )
    push = bsub.add_parser("push", help="create or update datasource, folder and dashboards")
    push.add_argument("--grafana-url", required=True, help="the Grafana to push to")
    push.add_argument(
        "--token",
        default=os.environ.get("GRAFANA_TOKEN", ""),
        help="service account token (default: $GRAFANA_TOKEN)",
    )
    push.add_argument(
        "--prometheus-url",
        default="http://localhost:9090",
        help="URL Grafana uses to reach Prometheus",
    )
    targets = sub.add_parser("targets", help="the targets file a standing Prometheus reads")
    tsub = targets.add_subparsers(dest="action", required=True)
    tprune = tsub.add_parser(
        "prune", help="remove the entries of runs that ended longer ago than their grace"
    )
    tprune.add_argument("file", type=Path, help="the file given to fleet run --targets-file")
    profile = sub.add_parser("profile", help="profiles that kind: simulated phones replay")
    psub = profile.add_subparsers(dest="action", required=True)
    capture = psub.add_parser(
        "capture", help="measure a profile from a run's completed trials (the real engine's)"
    )
    capture.add_argument("run_dir", type=Path, help="a finished run of real phones")
    capture.add_argument("-o", "--out", type=Path, required=True, help="the profile JSON to write")
    capture.add_argument("--name", default="", help="the profile's name (default: the file's)")
    capture.add_argument("--model", default="", help="the model label (default: the run's first)")
    certs = sub.add_parser("certs", help="make a lab CA and TLS certificates (openssl)")
    csub = certs.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("ca", help="a new lab CA: OUT/ca.pem and OUT/ca.key")
    ca.add_argument("--out", type=Path, default=Path("certs"), help="folder for it (certs)")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (3650)")
    iss = csub.add_parser("issue", help="a certificate signed by the lab CA: OUT/NAME.pem/.key")
    iss.add_argument("--ca", type=Path, default=Path("certs"), help="folder holding the CA")
    iss.add_argument("--name", required=True, help="host or phone name (the certificate's CN)")
    iss.add_argument("--out", type=Path, help="default: the CA's folder")
    iss.add_argument("--ip", action="append", default=[], help="an address it serves on")
    iss.add_argument("--dns", action="append", default=[], help="a DNS name it serves on")
    iss.add_argument("--client", action="store_true", help="a client certificate (mutual TLS)")
    iss.add_argument("--days", type=int, default=825, help="validity in days (825)")
    from fleet.devices.cli import add_parser as add_devices

    add_devices(sub)
    runs = sub.add_parser("runs", help="list the runs under a runs directory, newest first")
    runs.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.add_argument(
        "--html", action="store_true", help="also write RUNS_DIR/index.html linking each report"
    )
    compare = sub.add_parser(
        "compare", help="two runs' paradigm comparisons side by side, with the deltas"
    )
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the run compared with it")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    export = sub.add_parser(
        "export", help="write every table of a run's store as CSV, Parquet or JSON lines"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run (runs/<run-id>)")
    export.add_argument(
        "--format", choices=("csv", "parquet", "jsonl"), default="parquet", help="(parquet)"
    )
    export.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/export)")
    return p


def cmd_certs(ns) -> int:
    from fleet.coordinator.certs import CertError, issue, make_ca
    from fleet.limits import valid_name

    try:
        if ns.action == "ca":
            paths = make_ca(ns.out, days=ns.days)
        else:
            if not valid_name(ns.name):
                return _fail(f"--name {ns.name!r}: letters, digits, '.', '_' and '-' only")
            paths = issue(
                ns.ca,
                ns.name,
                ns.out or ns.ca,
                ips=tuple(ns.ip),
                dns=tuple(ns.dns),
                client=ns.client,
                days=ns.days,
            )
    except CertError as err:
        return _fail(str(err))
    for path in paths:
        print(path)
    return 0


def _load(path: str | None):
    from fleet.coordinator.config import ConfigError, load_experiment

    try:
        return load_experiment(path)
    except ConfigError as err:
        print(f"fleet: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _check(exp, source: str) -> list:
    from fleet.coordinator.plan import check_budgets, plan_trials

    trials = plan_trials(exp)
    problems = check_budgets(exp, trials)
    for problem in problems:
        print(f"fleet: {source}: {problem}", file=sys.stderr)
    if problems:
        sys.exit(EXIT_BAD_INPUT)
    return trials


def cmd_plan(ns) -> int:
    exp = _load(ns.experiment)
    print("seq\ttrial\tphone\trequests\tduration_s")
    for t in _check(exp, ns.experiment or "(embedded default)"):
        print(f"{t.seq}\t{t.trial_id}\t{t.phone}\t{len(t.trace)}\t{t.duration_s:g}")
    return 0


def _fail(message: str) -> int:
    print(f"fleet: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _preflight(exp, run_dir: Path | None, resume: bool) -> str:
    """What stops the run before anything starts ("" when nothing does)."""
    from fleet.coordinator.config import RemotePhone

    for phone in exp.phones:
        if isinstance(phone, RemotePhone):
            if not os.environ.get(phone.token_env):
                return f"phone {phone.name}: ${phone.token_env} is not set (its agent's token)"
            for what, path in phone.tls_files().items():
                if not Path(path).is_file():
                    return f"phone {phone.name}: TLS {what} file {path} does not exist"
    if not resume and run_dir is not None and run_dir.exists():
        return f"{run_dir} exists already (choose another --run-id, or --resume it)"
    return ""


def _resume_target(ns):
    """(experiment, source, base dir) of the run to resume, from its manifest."""
    from fleet.coordinator.config import ConfigError, parse_experiment
    from fleet.results.run_state import run_state

    run_dir = ns.resume
    if not (run_dir / "manifest.json").is_file() or not (run_dir / "results.sqlite").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no manifest.json and results.sqlite)")
    state = run_state(run_dir)
    if state.status == "live":
        raise ConfigError(f"{run_dir}: {state.detail}")
    if state.status == "finished":
        raise ConfigError(f"{run_dir}: finished already ({state.detail}); nothing to resume")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    source = manifest.get("experiment_source", "")
    base = Path(manifest.get("experiment_dir") or ".")
    return parse_experiment(manifest["experiment"], f"{run_dir}/manifest.json", base), source, base


def cmd_run(ns) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleet.coordinator.config import ConfigError, experiment_dir
    from fleet.coordinator.driver import Coordinator, ResumeError
    from fleet.results.run_state import RunBusy

    if ns.resume:
        if ns.experiment or ns.run_id:
            return _fail("--resume takes the run directory only (its experiment is stored)")
        try:
            exp, source, base = _resume_target(ns)
        except ConfigError as err:
            return _fail(str(err))
        runs_dir, run_id = ns.resume.parent, ns.resume.name
    else:
        exp = _load(ns.experiment)
        source = ns.experiment or "(embedded default)"
        base = experiment_dir(ns.experiment)
        runs_dir, run_id = ns.runs_dir, ns.run_id
    if ns.allow_shared_cores:
        exp = exp.model_copy(update={"allow_shared_cores": True})
    problem = _targets_problem(ns.targets_file, ns.targets_grace)
    if problem:
        return _fail(problem)
    console = _console()
    _check(exp, source)
    problem = _preflight(exp, runs_dir / run_id if run_id else None, bool(ns.resume))
    if problem:
        return _fail(problem)
    console.print(
        f"[bold]fleet {'run --resume' if ns.resume else 'run'}[/] {exp.name} from {source}: "
        f"{len(exp.phones)} phones, {len(exp.paradigms)} paradigms, {len(exp.workloads)} "
        f"workloads, {len(exp.models)} models, {exp.repetitions} repetitions"
    )
    terminal = sys.stdout.isatty()
    progress = Progress(  # the live bar: on a terminal only (off one, a line per trial)
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=ns.quiet or not terminal,
    )
    prometheus = "off" if ns.no_prometheus else (ns.prometheus_url or "embedded")
    coord = Coordinator(
        exp,
        runs_dir=runs_dir,
        source=source,
        address=ns.address,
        run_id=run_id,
        progress=progress,
        prometheus=prometheus,
        keep_prometheus=ns.keep_prometheus,
        targets_file=ns.targets_file,
        targets_grace_s=ns.targets_grace,
        announce=console.print,
        resume=bool(ns.resume),
        reaper=True,
        base_dir=base,
        lines=not terminal and not ns.quiet,
        verbose=ns.verbose,
        say=lambda text: console.print(text, markup=False, highlight=False),
    )
    console.print(f"run directory: {coord.run_dir}")
    try:
        with progress:
            result = coord.run()
    except (RunBusy, ResumeError) as err:
        return _fail(str(err))
    if result.stopped_by:
        console.print(
            f"[yellow]stopped by {result.stopped_by}[/]: records so far are in "
            f"{result.run_dir}; finish it with: fleet run --resume {result.run_dir}"
        )
        return EXIT_SIGNAL.get(result.stopped_by, EXIT_FAILED_TRIALS)
    try:
        _print_summary(result.run_dir, console)
        _print_comparison(result.run_dir, console)
    except Exception as exc:  # the records are safe in the store; say so instead of a traceback
        console.print(
            f"[red]could not summarize the run ({type(exc).__name__}: {exc}); "
            f"its records are in {result.run_dir}[/]"
        )
    if result.num_failed:
        console.print(
            f"[red]{result.num_failed} of {result.num_trials} trials failed[/]; "
            f"records received before the failures are in {result.run_dir}"
        )
        return EXIT_FAILED_TRIALS
    console.print(f"all {result.num_trials} trials completed; results in {result.run_dir}")
    return 0


def _print_summary(run_dir: Path, console) -> None:
    from fleet.results.report import min_n_of
    from fleet.results.store import ResultStore
    from fleet.results.summary import render, summarize

    store = ResultStore(run_dir / "results.sqlite")
    try:
        trials = store.query("SELECT trial_id, status, reason, summary_json FROM trials")
        labels = {
            json.loads(t["summary_json"]).get("weights_label", "")
            for t in trials
            if t["summary_json"]
        }
        render(
            summarize(store),
            trials,
            console,
            ", ".join(sorted(x for x in labels if x)),
            min_n=min_n_of(json.loads((run_dir / "manifest.json").read_text())),
        )
    finally:
        store.close()


def _print_comparison(run_dir: Path, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from fleet.results.report import comparison_rows, load, min_n_of, write_report
    from fleet.results.summary import MAX_TABLE_ROWS, more_rows

    manifest, groups, _ = load(run_dir)
    rows = comparison_rows(groups, min_n_of(manifest))
    if rows:
        table = Table(
            title=escape(
                "Paradigm comparison (co-run, every arrival of all repetitions; "
                "[min-max] over repetitions)"
            )
        )
        for col in rows[0]:
            table.add_column(
                col,
                justify="left" if col in ("phone", "paradigm", "model", "workload") else "right",
            )
        for r in rows[:MAX_TABLE_ROWS]:
            table.add_row(*(escape(v) for v in r.values()))
        console.print(table)
        if more_rows(len(rows)):
            console.print(more_rows(len(rows)))
    path = write_report(run_dir)
    console.print(f"report: {path}")


def cmd_report(ns) -> int:
    from fleet.results.report import write_report

    if not (ns.run_dir / "results.sqlite").is_file():
        print(f"fleet: {ns.run_dir}: not a run directory (no results.sqlite)", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(write_report(ns.run_dir, ns.output))
    return 0


def cmd_dashboards(ns) -> int:
    if ns.action == "build":
        from fleet.observe.dashboards import write_all

        for path in write_all(ns.out):
            print(path)
        return 0
    from fleet.observe.grafana_push import PushError, push

    try:
        for line in push(ns.grafana_url, ns.token, ns.prometheus_url):
            print(line)
    except PushError as err:
        print(f"fleet: {err}", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    return 0


def _targets_problem(path: Path | None, grace_s: float) -> str:
    import math

    if not (math.isfinite(grace_s) and 0 <= grace_s <= 7 * 86400):
        return f"--targets-grace must be between 0 and 604800 seconds, got {grace_s}"
    if path is None:
        return ""
    if path.is_dir():
        return f"--targets-file {path} is a directory; name a .json file in it"
    if path.suffix != ".json":
        return f"--targets-file {path} must end in .json (Prometheus file_sd reads it as JSON)"
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        return f"--targets-file {path}: {path.parent} is not a folder this user can write"
    return ""


def cmd_targets(ns) -> int:
    from fleet.observe.targets import prune

    if not ns.file.is_file():
        print(f"fleet: {ns.file}: no such targets file", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{ns.file}: removed {prune(ns.file)} target group(s) of ended runs")
    return 0


def cmd_profile(ns) -> int:
    from fleet.results.profile_capture import capture_profile
    from fleet.sim_profile import ProfileError

    if not (ns.run_dir / "results.sqlite").is_file():
        print(f"fleet: {ns.run_dir}: not a run directory (no results.sqlite)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        profile = capture_profile(ns.run_dir, name=ns.name or ns.out.stem, model=ns.model)
    except ProfileError as err:
        print(f"fleet: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ns.out.write_text(profile.to_json())
    for kind, p in sorted(profile.paradigms.items()):
        print(
            f"{kind}: prefill {p.prefill_s_per_token.median * 1000:.2f} ms/token, "
            f"ITL p50 {p.itl_s.median * 1000:.1f} ms (n={p.itl_s.n}), load p50 "
            f"{p.load_s.median:.1f} s, runtime {p.runtime_bytes / 2**20:.0f} MiB per process"
        )
    print(f"wrote {ns.out} ({profile.label}); use it as  profile: {ns.out}")
    return 0


def _console():
    from rich.console import Console

    # Not a terminal (CI logs, pipes): wide enough that the summary table is never truncated.
    return Console() if sys.stdout.isatty() else Console(width=220)


def cmd_summary(ns) -> int:
    if not (ns.run_dir / "results.sqlite").is_file():
        print(f"fleet: {ns.run_dir}: not a run directory (no results.sqlite)", file=sys.stderr)
        return EXIT_BAD_INPUT
    from fleet.results.run_state import run_state

    console = _console()
    _print_summary(ns.run_dir, console)
    state = run_state(ns.run_dir)
    if state.status in ("interrupted", "stopped"):
        console.print(f"[red]{state.status}[/]: {state.detail}")
        return EXIT_INCOMPLETE
    if state.status == "live":
        console.print(f"[yellow]live[/]: {state.detail}; this summary is partial")
    return 0


def cmd_runs(ns) -> int:
    import time

    from fleet.results.runs import list_runs

    rows = list_runs(ns.runs_dir)
    if ns.html:
        from fleet.results.runs import write_index

        print(write_index(ns.runs_dir, rows), file=sys.stderr)
    if ns.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    from rich.table import Table

    table = Table("run", "experiment", "started", "duration", "state", "phones", "paradigms",
                  "ok", "failed", "cut", title=f"{len(rows)} run(s) in {ns.runs_dir}")  # fmt: skip
    for r in rows:
        started = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at)) if r.started_at else ""
        )
        table.add_row(
            r.run_id, r.experiment, started,
            f"{r.duration_s:.0f} s" if r.duration_s is not None else "",
            r.state if not r.error else f"{r.state}: {r.error}",
            ", ".join(r.phones), ", ".join(r.paradigms),
            str(r.completed), str(r.failed), str(r.interrupted),
        )  # fmt: skip
    _console().print(table)
    return 0


def cmd_compare(ns) -> int:
    from fleet.results.compare import compare_runs

    for d in (ns.run_a, ns.run_b):
        if not (d / "results.sqlite").is_file():
            print(f"fleet: {d}: not a run directory (no results.sqlite)", file=sys.stderr)
            return EXIT_BAD_INPUT
    rows, only = compare_runs(ns.run_a, ns.run_b)
    if ns.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows], "unmatched": only}, indent=2))
        return 0
    from rich.table import Table

    table = Table("group", "figure", ns.run_a.name, ns.run_b.name, "B - A", "vs spread",
                  title=f"{ns.run_b.name} against {ns.run_a.name}")  # fmt: skip
    for r in rows:
        table.add_row(r.group, r.figure, r.a, r.b, r.delta, r.verdict)
    console = _console()
    console.print(table)
    console.print(
        "vs spread: 'beyond' = the runs' per-trial min-max ranges do not overlap; 'pooled' ="
        " a per-request figure over every arrival, which has no per-trial spread"
    )
    for line in only:
        console.print(f"not in both: {line}")
    return 0


def cmd_export(ns) -> int:
    from fleet.results.export import export_run

    if not (ns.run_dir / "results.sqlite").is_file():
        print(f"fleet: {ns.run_dir}: not a run directory (no results.sqlite)", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in export_run(ns.run_dir, ns.out or ns.run_dir / "export", ns.format):
        print(path)
    return 0


def cmd_devices(ns) -> int:
    from fleet.devices.cli import cmd_devices as run

    return run(ns)


def main(argv: list[str] | None = None) -> None:
    ns = _parser().parse_args(argv)
    handlers = {
        "run": cmd_run,
        "plan": cmd_plan,
        "summary": cmd_summary,
        "report": cmd_report,
        "dashboards": cmd_dashboards,
        "targets": cmd_targets,
        "profile": cmd_profile,
        "certs": cmd_certs,
        "devices": cmd_devices,
        "runs": cmd_runs,
        "compare": cmd_compare,
        "export": cmd_export,
    }
    from fleet.results.store import StoreError

    try:
        sys.exit(handlers[ns.command](ns))
    except StoreError as err:
        print(f"fleet: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
