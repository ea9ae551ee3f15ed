"""`make plots`: DVC's plots as one HTML page that opens offline.

`dvc plots show` writes a page that loads Vega from a CDN, so it stays blank without network. This runs
the same DVC command with an HTML template that carries the Vega, Vega-Lite and Vega-Embed bundle of
vl-convert-python (the Vega project's own packaging) inline.

    python -m fairprune.plots                      dvc plots show            -> dvc_plots/index.html
    python -m fairprune.plots diff HEAD~1          dvc plots diff HEAD~1     (any `dvc plots` arguments)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>fairprune: DVC plots</title>
  <script>@BUNDLE@</script>
  <style>table { border-spacing: 15px; }</style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""
TEMPLATE = Path(".dvc") / "tmp" / "plots-offline.html"


def write_template(path: Path = TEMPLATE) -> Path:
    import vl_convert

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.replace("@BUNDLE@", vl_convert.javascript_bundle()))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not Path(".dvc").is_dir():
        print("error: run this in the project folder (the one with .dvc/)", file=sys.stderr)
        return 2
    command = argv[:1] if argv[:1] in (["show"], ["diff"]) else ["show"]
    rest = argv[1:] if argv[:1] == command else argv
    template = write_template()
    return subprocess.call(["dvc", "plots", *command, *rest, "--html-template", str(template)])


if __name__ == "__main__":
    sys.exit(main())
