"""Optional dependencies: a run that needs a missing extra stops with the command that installs it, the
extras in pyproject.toml hold what the code asks for, and the lock fits pyproject's ranges.

A missing package is simulated the way Python itself marks a module unimportable: `None` in sys.modules
(`import x` then raises ModuleNotFoundError), undone by monkeypatch after the test.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError, exit_code_of
from tunesmith.extras import install_command, require

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"


def _pipeline_info():
    from tunesmith.models.diffusion import pipeline_info

    pipeline_info(None, None)


def _load_diffusion():
    from tunesmith.models.diffusion import load

    load(None, None, {})


def _text_to_image_model_class():
    from tunesmith.tasks.text_to_image import model_class

    model_class()


def _tag_metrics():
    from tunesmith.tasks.token_classification import tag_metrics

    tag_metrics([["B-PER", "O"]], [["B-PER", "O"]], "bio")


def _entities_of():
    from tunesmith.tasks.token_classification import entities_of

    entities_of(["B-PER", "I-PER"], "bio")


def _start_study():
    from tunesmith.search.study import start_study

    start_study(None)


def _load_study():
    from tunesmith.search.study import load_study

    load_study(Path("no-such-study"))


def _tracker(name):
    def call():
        from tunesmith.runs.trackers import require as require_trackers

        require_trackers([name])

    call.__name__ = f"tracker_{name}"
    return call


# (the module a run imports, the extra that installs it, the distribution in that extra, the call that imports it)
SITES = [
    ("diffusers", "diffusion", "diffusers", _pipeline_info),
    ("diffusers", "diffusion", "diffusers", _load_diffusion),
    ("diffusers", "diffusion", "diffusers", _text_to_image_model_class),
    ("seqeval", "ner", "seqeval", _tag_metrics),
    ("seqeval", "ner", "seqeval", _entities_of),
    ("optuna", "search", "optuna", _start_study),
    ("optuna", "search", "optuna", _load_study),
    ("tensorboard", "track", "tensorboard", _tracker("tensorboard")),
    ("mlflow", "track", "mlflow-skinny", _tracker("mlflow")),
    ("wandb", "track", "wandb", _tracker("wandb")),
]


@pytest.mark.parametrize(
    ("module", "extra", "call"),
    [(m, e, c) for m, e, _, c in SITES],
    ids=[f"{m}-{c.__name__.strip('_')}" for m, _, _, c in SITES],
)
def test_a_missing_package_names_its_extra(monkeypatch, module, extra, call):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(TunesmithError) as error:
        call()
    assert f"pip install 'tunesmith[{extra}]'" in error.value.fix
    assert f"needs {module}, which is not installed" in error.value.message


def test_a_missing_tracker_names_the_config_key_and_the_way_out(monkeypatch):
    from tunesmith.runs.trackers import require as require_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TunesmithError) as error:
        require_trackers(["wandb"])
    assert error.value.where == "track.report_to"
    assert error.value.fix == "pip install 'tunesmith[track]' (or remove wandb from track.report_to)"


def test_the_cli_prints_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "seqeval", None)
    assert exit_code_of(lambda: require("seqeval", "ner", "token classification")) == 2
    err = capsys.readouterr().err
    assert "error: token classification needs seqeval, which is not installed" in err
    assert "fix: pip install 'tunesmith[ner]'" in err


def test_a_broken_install_is_told_apart_from_a_missing_one(monkeypatch, tmp_path):
    (tmp_path / "halfinstalled").mkdir()
    (tmp_path / "halfinstalled" / "__init__.py").write_text("import tunesmith_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TunesmithError) as error:
        require("halfinstalled", "vision", "image classification")
    assert "halfinstalled, which is installed but cannot be imported" in error.value.message
    assert "tunesmith_no_such_dependency" in error.value.message
    assert error.value.fix == install_command("vision")
    monkeypatch.delitem(sys.modules, "halfinstalled", raising=False)


def test_a_present_module_is_returned():
    import json

    assert require("json", "none", "reading JSON") is json
    assert require("os.path", "none", "paths") is sys.modules["os.path"]


# ---------------------------------------------------------------------------------------------------
# pyproject.toml and the lock


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def test_each_extra_holds_the_package_its_error_names():
    extras = _pyproject()["project"]["optional-dependencies"]
    for module, extra, distribution, _ in SITES:
        assert distribution in {_name(r) for r in extras[extra]}, (module, extra)
    core = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    assert not core & {"diffusers", "seqeval", "optuna", "tensorboard", "mlflow-skinny", "wandb"}


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_the_lock_fits_the_ranges_and_holds_torch_at_the_cpu_build():
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    locked = _locked()
    assert locked["torch"] == "2.13.0"
    requirements = list(project["dependencies"]) + [
        r for extra, reqs in project["optional-dependencies"].items() if extra != "starters" for r in reqs
    ]
    for text in requirements:
        requirement = Requirement(text)
        name = _name(text)
        assert name in locked, f"{name} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} has {name}=={locked[name]}, outside pyproject's {requirement.specifier}: run `make lock`"
        )


def test_the_environment_is_the_lock():
    """`make setup` installs with the lock as constraints: every locked package that is installed has the
    locked version (CUDA-only entries of torch's PyPI build are not installed with the CPU build)."""
    locked = _locked()
    wrong = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in locked and dist.version.split("+")[0] != locked[name]:
            wrong[name] = (dist.version, locked[name])
    assert not wrong, f"installed (version, locked): {wrong}; run `make setup`"
