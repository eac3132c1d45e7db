"""`kbypass doctor [--json]`: is this machine ready for the bypass path? Each failed check prints its fix."""

from __future__ import annotations

from rich.table import Table

from kbypass.host import doctor
from kbypass.tools._common import console, print_json
from kbypass.tools._options import add_prefix


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check root, BPF, AF_XDP, bpffs, BTF, clang, libbpf, native XDP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_prefix(p)  # which testbed the native-XDP check tries
    p.set_defaults(func=run)


def run(args) -> int:
    results = doctor.run(prefix=args.prefix)
    ok = doctor.healthy(results)
    if args.json:
        print_json({"ok": ok, "checks": [c.to_json() for c in results]})
    else:
        show(results)
    return 0 if ok else 1


def show(results: list[doctor.Check]) -> None:
    table = Table(title="kbypass doctor")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("detail")
    table.add_column("fix")
    for c in results:
        mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]warn[/]")
        table.add_row(mark, c.name, c.detail, "" if c.ok else c.fix)
    console().print(table)
