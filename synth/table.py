"""The README's table of FPGA builds: one row per report in ``synth/reports/``.

``python -m npu.synth.table`` rewrites the README between its ``<!-- begin synth -->`` and
``<!-- end synth -->`` markers (``make synth`` runs it after every build), so each row is the
report of a build that its make line reproduces.
"""

import argparse
import json
import re
import shlex
from pathlib import Path

from .build import REPORTS_DIR

__all__ = ["README", "make_line", "render_table", "update_readme"]

README = Path(__file__).resolve().parent.parent / "README.md"
_MARKERS = re.compile(r"(<!-- begin synth -->\n).*?(<!-- end synth -->)", re.DOTALL)
_MAKE_VARS = {"--board": "BOARD", "--cores": "CORES", "--rows": "ROWS", "--cols": "COLS"}


def make_line(command):
    """The ``make synth`` line for a report's ``python -m npu.synth.build ...`` command."""
    args = shlex.split(command)
    if args[:3] != ["python", "-m", "npu.synth.build"]:
        return command
    make, extra = [], []
    rest = args[3:]
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        i += 1
        if not eq and i < len(rest) and not rest[i].startswith("--"):
            value = rest[i]
            i += 1
        if name in _MAKE_VARS:
            make.append(f"{_MAKE_VARS[name]}={value}")
        else:
            extra += [name, value] if value else [name]
    line = "make synth " + " ".join(make)
    if extra:
        line += f" SYNTH_ARGS={shlex.quote(' '.join(extra))}"
    return line


def _used(resource):
    return f"{resource['used']} / {resource['available']}"


def render_table(reports_dir=REPORTS_DIR):
    """Markdown table of every ``*.json`` report in ``reports_dir``, sorted by board and MACs."""
    reports = [json.loads(p.read_text()) for p in sorted(Path(reports_dir).glob("*.json"))]
    reports.sort(key=lambda r: (r["board"], r["config"]["macs"], r["config"]["cores"]))
    lines = [
        ("| board | cores x array | MACs | LUTs | FFs | DSPs | block RAMs | Fmax (MHz) "
         "| target (MHz) | result | peak GOPS | reproduce |"),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in reports:
        cfg, res = r["config"], r["resources"]
        luts = res.get("logic_cells", res["luts"])
        lut_text = _used(luts) + (" logic cells" if "logic_cells" in res else "")
        rams = ", ".join(f"{_used(v)} {name}" for name, v in res["rams"].items())
        fmax = r["fmax_mhz"]
        if not r.get("routed", True):
            result = "placed only: Fmax estimated"
        elif r["pass"]:
            result = "pass"
        elif r["error"] and not r["fits"]:
            result = "does not fit"
        elif r["error"]:
            result = "build stopped"
        else:
            result = "below target"
        gops = r["peak_gops_at_fmax"]
        lines.append(
            f"| {r['board']} ({r['device']}) | {cfg['cores']} x {cfg['rows']}x{cfg['cols']}"
            f"{', lane gather' if cfg.get('gather') == 'lane' else ''} "
            f"| {cfg['macs']} | {lut_text} | {res['ffs']['used']} | {_used(res['dsps'])} "
            f"| {rams} | {fmax if fmax is not None else '-'} | {r['target_mhz']:g} | {result} "
            f"| {gops if gops is not None else '-'} | `{make_line(r['command'])}` |")
    return "\n".join(lines)


def update_readme(readme=README, reports_dir=REPORTS_DIR):
    """Rewrite the README's synth table; return whether it changed."""
    text = Path(readme).read_text()
    if not _MARKERS.search(text):
        raise ValueError(f"{readme} has no '<!-- begin synth -->' / '<!-- end synth -->' "
                         "markers")
    new = _MARKERS.sub(lambda m: m.group(1) + render_table(reports_dir) + "\n" + m.group(2),
                       text)
    Path(readme).write_text(new)
    return new != text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR))
    args = parser.parse_args(argv)
    changed = update_readme(args.readme, args.reports_dir)
    print(f"{'updated' if changed else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
