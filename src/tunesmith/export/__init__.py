"""Exports of a finished run, each checked against the run's own model. One module per format, one line
each in FORMATS (a table of module paths, not a third registry: style rule 4).

A format module declares:
  NAME      the `--format` value
  SUMMARY   one line for the docs and the progress line
  unsupported(config) -> str | None          why this run cannot be exported in this format (ONNX for a
                                             causal LM), None when it can; read before any weight loads
  write(tuned, run_dir, output, options) -> list[Path]                 the files written into `output`
  parity(tuned, output, inputs, options) -> parity.ParityResult        the export loaded back in the runtime
                                             that will use it, compared with `tuned` on `inputs`

FORMATS holds names and module paths only: a format module is imported when it is used, so
`tunesmith --help` imports neither torch nor a format's runtime (onnx, llama.cpp).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from tunesmith import __version__
from tunesmith.config import load_saved_config
from tunesmith.errors import TunesmithError, lookup
from tunesmith.runs.atomic import atomic_directory, atomic_write_text
from tunesmith.runs.rundir import RunDir

# --format name -> module path, in the order the docs list them; a module is imported when it is used.
FORMATS: dict[str, str] = {
    "merged": "tunesmith.export.merged",
    "onnx": "tunesmith.export.onnx",
}
RECORD = "export.json"  # written next to the exported files


def get_format(name: str) -> ModuleType:
    return importlib.import_module(lookup(FORMATS, name, what="export format", where="--format", listing="formats"))


def export_run(
    run_dir: str | Path,
    fmt: str,
    output: str | Path,
    *,
    samples: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a finished run in format `fmt` to the folder `output`, check it against the run's own model
    on held-out inputs, print the figures and write them to `output`/export.json. Raises TunesmithError
    when the export is outside its tolerance; the files are kept for inspection."""
    from tunesmith.export.parity import DEFAULT_SAMPLES, parity_inputs
    from tunesmith.pipeline import load_tuned

    options = dict(options or {})
    output = Path(output)
    # 1. Everything that can be refused is refused before a weight loads.
    _refuse_existing(output)
    run = RunDir.open(run_dir)
    module = get_format(fmt)
    config = load_saved_config(run.config_path)
    reason = module.unsupported(config)
    if reason:
        raise TunesmithError(
            f"run {run.path.name} cannot be exported as {fmt}: {reason}",
            where="--format",
            fix=f"formats: {', '.join(FORMATS)}",
        )
    # 2. The run's own model (base + adapter, as predict loads it) is the reference of the parity check.
    print(f"exporting {run.path} as {fmt}: {module.SUMMARY}")
    tuned = load_tuned(run.path, allow_pickle=bool(options.get("allow_pickle", False)))
    inputs = parity_inputs(tuned, run.path, samples or DEFAULT_SAMPLES)
    # 3. Written into a staging folder and renamed when complete: a cut-short export never looks finished.
    with atomic_directory(output) as staging:
        written = module.write(tuned, run.path, staging, options)
        files = [str(Path(p).relative_to(staging)) for p in written]
    # 4. Checked in the runtime that will use it, recorded either way.
    result = module.parity(tuned, output, inputs, options)
    record = {
        "format": fmt,
        "run": str(run.path),
        "output": str(output),
        "files": files,
        "parity": result.as_dict() | {"inputs": inputs.count, "source": inputs.source},
        "passed": result.passed,
        "tunesmith_version": __version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(output / RECORD, json.dumps(record, indent=2) + "\n")
    _print_parity(record)
    if not result.passed:
        raise TunesmithError(
            f"the {fmt} export failed its parity check against the run's model: {result.detail}",
            where=str(output / RECORD),
            fix=f"the files are kept at {output} for inspection; report the figures in {RECORD} "
            "if the run's own model answers correctly",
        )
    return record


def _refuse_existing(output: Path) -> None:
    """Never overwrite: an export lands in a new folder or an empty one."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TunesmithError(
            f"{output} already exists and is not an empty folder",
            where="--output",
            fix="choose a new --output folder; tunesmith never overwrites files",
        )


def _print_parity(record: dict[str, Any]) -> None:
    parity = record["parity"]
    print(f"parity on {parity['inputs']} held-out inputs from {parity['source']}:")
    for name, value in parity["metrics"].items():
        print(f"  {name:16} {value:.6g}")
    bounds = ", ".join(
        f"{key.removeprefix('min_')} {'>=' if key.startswith('min_') else '<='} {value:g}"
        for key, value in parity["tolerance"].items()
    )
    print(f"  tolerance        {bounds}")
    verdict = "passed" if record["passed"] else f"FAILED ({parity['detail']})"
    print(f"{verdict}: {len(record['files'])} files and {RECORD} in {record['output']}")
