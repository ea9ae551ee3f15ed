"""The `validate` stage (fairprune.data.fingerprint): the first stage of every `dvc repro`.

Stage commands run the `python` first on PATH. When that is not the project's environment (plain
`.venv/bin/dvc repro` without the venv activated), say so here, before any stage whose outputs DVC
deletes has started.
"""
import sys

try:
    from fairprune.data import fingerprint
except ModuleNotFoundError as exc:
    print(f"error: {sys.executable} cannot import '{exc.name}': the `python` on PATH is not the project's "
          f"environment. Activate it (`source .venv/bin/activate`) or run `make run`; nothing was changed.",
          file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(fingerprint.main())
