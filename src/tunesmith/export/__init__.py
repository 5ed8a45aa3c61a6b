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
and optionally:
  check_options(options) -> None             refuses bad options (--quantize) before any weight loads
  FILE_SUFFIX                                `--output` ending in it names one file (out/model.gguf) in a
                                             folder that may hold other files; `write` finds its name in
                                             options["file_name"] and the record is <stem>.export.json

FORMATS holds names and module paths only: a format module is imported when it is used, so
`tunesmith --help` imports neither torch nor a format's runtime (onnx, llama.cpp).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
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
    "gguf": "tunesmith.export.gguf",
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
    run = RunDir.open(run_dir)
    module = get_format(fmt)
    for flag in ("quantize", "ollama"):
        if options.get(flag) and flag not in getattr(module, "FLAGS", ()):
            raise TunesmithError(
                f"--{flag} does not apply to --format {fmt}",
                where=f"--{flag}",
                fix=f"leave out --{flag}; `tunesmith export --help` says which formats take it",
            )
    folder, record_path = _destination(module, output, options)
    config = load_saved_config(run.config_path)
    reason = module.unsupported(config)
    if reason:
        raise TunesmithError(
            f"run {run.path.name} cannot be exported as {fmt}: {reason}",
            where="--format",
            fix=f"formats: {', '.join(FORMATS)}",
        )
    if hasattr(module, "check_options"):
        module.check_options(options)
    # 2. The run's own model (base + adapter, as predict loads it) is the reference of the parity check.
    print(f"exporting {run.path} as {fmt}: {module.SUMMARY}")
    tuned = load_tuned(run.path, allow_pickle=bool(options.get("allow_pickle", False)))
    inputs = parity_inputs(tuned, run.path, samples or DEFAULT_SAMPLES)
    # 3-4. Written into a staging folder and checked there in the runtime that will use it, then moved into
    # place: a cut-short export never looks finished, and one whose check crashed leaves nothing behind.
    files, result = _write_and_check(module, tuned, run.path, folder, inputs, options)
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
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    _print_parity(record, record_path)
    if not result.passed:
        raise TunesmithError(
            f"the {fmt} export failed its parity check against the run's model: {result.detail}",
            where=str(record_path),
            fix=f"the files are kept at {output} for inspection; report the figures in {record_path.name} "
            "if the run's own model answers correctly",
        )
    return record


def _destination(module: ModuleType, output: Path, options: dict[str, Any]) -> tuple[Path, Path]:
    """The folder the files go to and the record's path. Never overwrite: a folder export lands in a new
    or empty folder; a one-file export (out/model.gguf) beside other files, none of its names taken."""
    suffix = getattr(module, "FILE_SUFFIX", None)
    if suffix and output.suffix == suffix:
        folder, stem = output.parent, output.stem
        options["file_name"] = output.name
        options["side_file_prefix"] = f"{stem}."  # e.g. model.Modelfile: two exports can share a folder
        record = folder / f"{stem}.{RECORD}"
        sides = [folder / f"{stem}.{name}" for name in getattr(module, "SIDE_FILES", ())]
        taken = [p for p in (output, record, *sides) if p.exists()]
        if taken:
            raise TunesmithError(
                f"{taken[0]} already exists",
                where="--output",
                fix="choose another --output file name; tunesmith never overwrites files",
            )
        return folder, record
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TunesmithError(
            f"{output} already exists and is not an empty folder",
            where="--output",
            fix="choose a new --output folder; tunesmith never overwrites files",
        )
    return output, output / RECORD


def _write_and_check(
    module: ModuleType, tuned: Any, run_dir: Path, folder: Path, inputs: Any, options: dict[str, Any]
) -> tuple[list[str], Any]:
    """module.write and module.parity in a staging folder, then the folder renamed into place (a folder
    export) or each file moved beside what the folder holds (a one-file export). Files the check removed
    (a quantiser's intermediate) are not listed. If writing or checking raises, nothing is left."""
    if "file_name" not in options:
        with atomic_directory(folder) as staging:
            written = [Path(p) for p in module.write(tuned, run_dir, staging, options)]
            result = module.parity(tuned, staging, inputs, options)
            return [str(p.relative_to(staging)) for p in written if p.exists()], result
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{options['file_name']}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        written = [Path(p) for p in module.write(tuned, run_dir, staging, options)]
        result = module.parity(tuned, staging, inputs, options)
        kept = [p for p in written if p.exists()]
        for path in kept:
            if (folder / path.name).exists():  # taken while the export ran
                raise TunesmithError(
                    f"{folder / path.name} already exists", where="--output", fix="choose another --output"
                )
        for path in kept:
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [p.name for p in kept], result


def _print_parity(record: dict[str, Any], record_path: Path) -> None:
    parity = record["parity"]
    print(f"parity on {parity['inputs']} held-out inputs from {parity['source']}:")
    _print_figures(parity)
    # A check made on the way (a quantised GGUF's f16 source) is printed under its name.
    for name, part in parity.items():
        if isinstance(part, dict) and "metrics" in part:
            print(f"{name.replace('_', ' ')}: {'passed' if part['passed'] else 'FAILED (' + part['detail'] + ')'}")
            _print_figures(part)
    verdict = "passed" if record["passed"] else f"FAILED ({parity['detail']})"
    print(f"{verdict}: {', '.join(record['files'])} and {record_path.name} in {record_path.parent}")


def _print_figures(parity: dict[str, Any]) -> None:
    width = max(16, *(len(name) for name in parity["metrics"]))
    for name, value in parity["metrics"].items():
        print(f"  {name:{width}} {value:.6g}")
    bounds = ", ".join(
        f"{key.removeprefix('min_')} {'>=' if key.startswith('min_') else '<='} {value:g}"
        for key, value in parity["tolerance"].items()
    )
    print(f"  {'tolerance':{width}} {bounds}")
