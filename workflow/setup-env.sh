#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: pip, pinned torch, the
# `ascsharp` package (editable) with its dev tools. Does nothing when .venv is already in step
# with pyproject.toml. Usage: bash workflow/setup-env.sh   (then: source .venv/bin/activate)
# (With conda instead of a venv: envs/ascsharp.yaml says how; docs/design.md, "Environments".)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp="$venv/.pyproject.sha256"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x "$venv/bin/ascsharp" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "setting up $venv (first time: a few minutes; torch is large)" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
