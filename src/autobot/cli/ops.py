"""`autobot ops`: operator commands on the controller.

Each command runs, through ansible-runner, the playbook an operator could run by hand (its --help and the
first line of every run show that `ansible-playbook` command), with live progress, then a summary per host
and the health of every machine read afterwards. Runs are kept in `.autobot/runs/` of the checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml
from rich.console import Console
from rich.text import Text

from autobot.ops import commands
from autobot.ops.commands import DEFAULT_INVENTORY, PLAYBOOKS, CommandError, PlaybookCall, RunOptions
from autobot.ops.display import LiveProgress, failure_text, local_cluster_down, summary_table
from autobot.ops.health import health_table, keys_table, machines_from_events
from autobot.ops.inventory import PRODUCTION, inventory_env, needs_confirmation
from autobot.ops.runs import DEFAULT_KEEP
from autobot.ops.session import Outcome, load_events, run_action, stdout_tail

MATRIX_FILE = Path("inventory") / "group_vars" / "all" / "services.yml"
EXIT_MISSING_PLAYBOOK = 2


def _project_dir() -> Path:
    """The checkout the operator runs from: the nearest parent holding ansible.cfg and playbooks/."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "ansible.cfg").is_file() and (candidate / "playbooks").is_dir():
            return candidate
    raise click.ClickException(
        "run this from the toolkit checkout (no ansible.cfg + playbooks/ found above here)"
    )


def _known_services(project: Path) -> set[str]:
    """The matrix's service ids, to refuse a typo before anything runs (empty: only the form is checked)."""
    try:
        data: Any = yaml.safe_load((project / MATRIX_FILE).read_text(encoding="utf-8"))
        return {str(k) for k in data["autobot_services"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return set()


def _inventory(project: Path, given: str) -> tuple[Path, str]:
    """The inventory's path, and how to show it (relative to the checkout, as the runner is started there)."""
    candidates = [Path(given)] if Path(given).is_absolute() else [Path.cwd() / given, project / given]
    for candidate in candidates:
        if candidate.exists():
            path = candidate.resolve()
            try:
                return path, str(path.relative_to(project))
            except ValueError:
                return path, str(path)
    raise click.BadParameter(f"{given} does not exist", param_hint="'-i' / '--inventory'")


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        # pipes and CI report 80 columns: give the tables room for host names, release ids and states
        console = Console(width=max(console.width, 160))
    return console


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _confirm(env: str | None, call: PlaybookCall, shown_inventory: str) -> None:
    name = env or PRODUCTION
    click.echo(f"{call.playbook} will run against {name.upper()} ({shown_inventory}).", err=True)
    try:
        answer = click.prompt(
            f"Type the environment name ({name}) to continue", default="", show_default=False
        )
    except click.Abort:
        _fail("no confirmation: nothing was run")
    if answer.strip() != name:
        _fail(f"the confirmation did not match {name!r}: nothing was run")


def _prepare(call: PlaybookCall, opts: dict[str, Any]) -> tuple[Path, RunOptions, str | None]:
    project = _project_dir()
    path, shown = _inventory(project, opts["inventory"])
    if not (project / call.playbook).is_file():
        _fail(
            f"{call.playbook} does not exist yet in this checkout: `autobot ops {call.command}` "
            "runs it once it lands",
            EXIT_MISSING_PLAYBOOK,
        )
    options = RunOptions(
        inventory=shown,
        check=bool(opts.get("check")),
        extra_vars=tuple(opts["extra_vars"]),
        verbosity=int(opts["verbosity"]),
        limit=opts["limit"],
    )
    env = inventory_env(path)
    if needs_confirmation(path, env) and not opts["yes"]:
        _confirm(env, call, shown)
    return project, options, env


def _header(console: Console, call: PlaybookCall, options: RunOptions) -> None:
    console.print(Text.assemble(("autobot ops ", "bold"), (call.command, "bold cyan")))
    console.print(Text("  " + commands.command_line(call, options), style="dim"), soft_wrap=True)


def _run(
    console: Console, project: Path, call: PlaybookCall, options: RunOptions, read_health: bool
) -> Outcome:
    keep = click.get_current_context().find_object(_Settings)
    return run_action(
        project,
        call,
        options,
        lambda: LiveProgress(console, verbose=options.verbosity > 0),
        keep=keep.keep_runs if keep else DEFAULT_KEEP,
        read_health=read_health,
    )


def _report_failure(console: Console, outcome: Outcome, env: str | None) -> None:
    failures = outcome.state.final_failures()
    down = local_cluster_down(failures, sorted(outcome.state.hosts), env)
    if down:
        console.print(Text(down, style="bold red"))
    elif failures:
        console.print(failure_text(failures), soft_wrap=True)  # one line per host, whole, for grep
    else:
        console.print(
            Text(
                f"ansible-playbook stopped ({outcome.result.status}, rc {outcome.result.rc}):",
                style="bold red",
            )
        )
        console.print(Text.from_ansi(stdout_tail(outcome.result.artifact_dir)))


def _finish(console: Console, outcome: Outcome) -> None:
    if outcome.render_error:
        console.print(
            f"[yellow]the progress display failed ({outcome.render_error}); the run was not affected[/]"
        )
    console.print(Text(f"run folder: {outcome.result.artifact_dir}", style="dim"), soft_wrap=True)


def _action(call: PlaybookCall, opts: dict[str, Any]) -> None:
    project, options, env = _prepare(call, opts)
    console = _console()
    _header(console, call, options)
    outcome = _run(console, project, call, options, read_health=True)
    machines = {m.host: m for m in outcome.machines} if outcome.machines else None
    console.print(summary_table(outcome.state, machines, title=f"autobot ops {call.command}: per host"))
    if outcome.health_error:
        console.print(f"[yellow]{outcome.health_error}[/]")
    ok = outcome.result.ok
    if not ok:
        _report_failure(console, outcome, env)
    _finish(console, outcome)
    if not ok:
        sys.exit(1)


class _Settings:
    def __init__(self, keep_runs: int) -> None:
        self.keep_runs = keep_runs


def _equivalent(playbook: str, suffix: str = "") -> str:
    line = f"ansible-playbook -i {DEFAULT_INVENTORY} {playbook}{' ' + suffix if suffix else ''}"
    return f"\b\nRuns the same as:\n  {line}\n(plus -i, -e, --limit, --check --diff and -v as given)"


def _run_options(check: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every command shares."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--yes", is_flag=True, help="Skip the typed confirmation a production inventory needs."
        )(f)
        f = click.option("--limit", metavar="PATTERN", help="Only these hosts (ansible-playbook --limit).")(f)
        f = click.option(
            "-v",
            "--verbose",
            "verbosity",
            count=True,
            help="Ansible verbosity (-v to -vvvv); prints ansible's output.",
        )(f)
        f = click.option(
            "-e",
            "--extra-vars",
            "extra_vars",
            multiple=True,
            metavar="VARS",
            help="Passed on as ansible-playbook -e.",
        )(f)
        if check:
            f = click.option(
                "--check", is_flag=True, help="Check mode with diff: show what would change, change nothing."
            )(f)
        return click.option(
            "-i",
            "--inventory",
            metavar="PATH",
            default=DEFAULT_INVENTORY,
            show_default=True,
            help="Inventory of the cluster (production asks for a typed confirmation).",
        )(f)

    return decorate


def _call(build: Callable[[], PlaybookCall]) -> PlaybookCall:
    try:
        return build()
    except CommandError as exc:
        raise click.UsageError(str(exc)) from None


def _services() -> set[str]:
    try:
        return _known_services(_project_dir())
    except click.ClickException:
        return set()


@click.group()
@click.option(
    "--keep-runs",
    type=click.IntRange(min=1),
    default=DEFAULT_KEEP,
    show_default=True,
    help="Run folders kept in .autobot/runs/ (the newest).",
)
@click.pass_context
def ops(ctx: click.Context, keep_runs: int) -> None:
    """Operate a cluster from the controller: every command runs a playbook through ansible-runner."""
    ctx.obj = _Settings(keep_runs)


@ops.command(epilog=_equivalent(PLAYBOOKS["status"]))
@_run_options(check=False)
def status(**opts: Any) -> None:
    """Print a health table of every machine; exit 1 unless all are healthy."""
    call = commands.status()
    project, options, env = _prepare(call, opts)
    console = _console()
    _header(console, call, options)
    outcome = _run(console, project, call, options, read_health=False)
    machines = machines_from_events(load_events(outcome.result.artifact_dir))
    down = local_cluster_down(outcome.state.final_failures(), sorted(outcome.state.hosts), env)
    if not machines or down:
        if machines:
            console.print(health_table(machines, title=f"AutoBot cluster health ({options.inventory})"))
        _report_failure(console, outcome, env)
        _finish(console, outcome)
        sys.exit(1)
    console.print(health_table(machines, title=f"AutoBot cluster health ({options.inventory})"))
    console.print(keys_table(machines, title="Service keys and Redis passwords (versions only)"))
    _finish(console, outcome)
    if not all(m.healthy for m in machines):
        sys.exit(1)


@ops.command(epilog=_equivalent(PLAYBOOKS["site"]))
@_run_options()
def site(**opts: Any) -> None:
    """Converge the whole cluster."""
    _action(commands.site(), opts)


@ops.command(epilog=_equivalent(PLAYBOOKS["deploy"], "[-e service=ID]"))
@click.option("--service", metavar="ID", help="Deploy only this service (default: all, callees first).")
@_run_options()
def deploy(service: str | None, **opts: Any) -> None:
    """Deploy a new release of the services."""
    _action(_call(lambda: commands.deploy(service, _services())), opts)


@ops.command(
    epilog=_equivalent(
        PLAYBOOKS["phase"], "-e middleware_file=service_auth_logging.py|service_auth_enforcement.py|none"
    )
)
@click.argument("name", type=click.Choice(list(commands.PHASE_MIDDLEWARE)))
@_run_options()
def phase(name: str, **opts: Any) -> None:
    """Switch the service-auth phase (the middleware file each entry file imports), machine by machine."""
    _action(_call(lambda: commands.phase(name)), opts)


@ops.command(epilog=_equivalent(PLAYBOOKS["gate"], "[-e gate_override=REASON]"))
@click.option("--override", metavar="REASON", help="Pass the gate anyway; the reason is recorded.")
@_run_options()
def gate(override: str | None, **opts: Any) -> None:
    """Check whether the logging phase may move to enforcement (the rollout gate)."""
    _action(_call(lambda: commands.gate(override)), opts)


@ops.group()
def rotate() -> None:
    """Rotate service keys or Redis passwords (staged, resumable)."""


@rotate.command("keys", epilog=_equivalent(PLAYBOOKS["rotate keys"], "[-e service=ID]"))
@click.option("--service", metavar="ID", help="Rotate only this service's keys.")
@_run_options()
def rotate_keys(service: str | None, **opts: Any) -> None:
    """Rotate the service signing keys."""
    _action(_call(lambda: commands.rotate_keys(service, _services())), opts)


@rotate.command("redis", epilog=_equivalent(PLAYBOOKS["rotate redis"], "[-e service=ID]"))
@click.option("--service", metavar="ID", help="Rotate only this service's Redis password.")
@_run_options()
def rotate_redis(service: str | None, **opts: Any) -> None:
    """Rotate the Redis ACL passwords."""
    _action(_call(lambda: commands.rotate_redis(service, _services())), opts)


@ops.command(epilog=_equivalent(PLAYBOOKS["revoke"], "-e revoke=SERVICE:vN"))
@click.argument("key", metavar="SERVICE:vN")
@_run_options()
def revoke(key: str, **opts: Any) -> None:
    """Revoke one key version everywhere (e.g. main-backend:v2)."""
    _action(_call(lambda: commands.revoke(key, _services())), opts)


@ops.group()
def rollback() -> None:
    """Roll back services, the service-auth phase, or the Redis ACL."""


@rollback.command(
    "services", epilog=_equivalent(PLAYBOOKS["rollback services"], "[-e service=ID] [-e release=ID]")
)
@click.option("--service", metavar="ID", help="Roll back only this service.")
@click.option("--release", metavar="ID", help="Go to this release (default: the previous one).")
@_run_options()
def rollback_services(service: str | None, release: str | None, **opts: Any) -> None:
    """Serve the previous (or the named) release again."""
    _action(_call(lambda: commands.rollback_services(service, release, _services())), opts)


@rollback.command("service-auth", epilog=_equivalent(PLAYBOOKS["rollback service-auth"]))
@_run_options()
def rollback_service_auth(**opts: Any) -> None:
    """Restore each machine's previous service-auth phase."""
    _action(commands.rollback_service_auth(), opts)


@rollback.command("redis-acl", epilog=_equivalent(PLAYBOOKS["rollback redis-acl"]))
@_run_options()
def rollback_redis_acl(**opts: Any) -> None:
    """Restore the previous Redis ACL file and restart Redis."""
    _action(commands.rollback_redis_acl(), opts)
