"""`tunesmith push`: publish a finished run to a Hugging Face Hub repository: the adapter (or, with
`merged`, a merged export checked against the run's model), the resolved config and a model card.

Everything that can be refused is refused before a byte is sent: the run, the token, the endpoint's
reachability. The files are staged in a temporary folder and sent as one commit, so the repository never
holds half a push.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tunesmith.config import load_saved_config
from tunesmith.errors import TunesmithError
from tunesmith.runs.rundir import RunDir

REACH_TIMEOUT_S = 10  # a hub that does not answer in this long is reported unreachable, before any upload
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Written by peft into the adapter folder: a generic template the run's own card replaces.
_SKIPPED_WEIGHT_FILES = {"README.md"}


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    merged: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Create (or reuse) the model repository `repo_id` and commit the run's weights, config.yaml and a
    README.md model card to it. `allow_pickle` (`--allow-pickle`) is passed to the merged export's load.
    Returns what was pushed: the repository url, commit url and file names."""
    from tunesmith.methods import get_method
    from tunesmith.push.card import render_card

    _check_repo_id(repo_id)
    run = RunDir.open(run_dir)
    config = load_saved_config(run.config_path)
    saves_adapter = get_method(config.method.name).saves_adapter
    weights = run.weights_dir(saves_adapter)
    if not weights.is_dir():
        raise TunesmithError(
            f"{run.path} has no {weights.name}/ (the run did not finish)",
            fix=f"continue it with `tunesmith train --resume {run.path}`",
        )
    token = _token(token)
    endpoint = _endpoint(endpoint)
    _check_reachable(endpoint)
    card = render_card(config, run.read_json("summary.json"), repo_id, merged=merged, saves_adapter=saves_adapter)
    with tempfile.TemporaryDirectory(prefix="tunesmith-push-") as tmp:
        staging = Path(tmp) / "repo"
        _stage_weights(weights, staging, merged, run.path, allow_pickle)
        # The saved config is already masked (dump_config wrote it): copied as it is, what actually ran.
        shutil.copyfile(run.config_path, staging / "config.yaml")
        (staging / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        repo_url, commit_url = _upload(staging, repo_id, private, token, endpoint, run.path.name)
    print(f"pushed {len(files)} files to {repo_url} ({'private' if private else 'public'}): {commit_url}")
    return {"repo_url": repo_url, "commit_url": commit_url, "files": files, "private": private, "merged": merged}


def _check_repo_id(repo_id: str) -> None:
    # A bare name would land in whichever account the token belongs to: the user names it on purpose.
    if not _REPO_ID.match(repo_id or ""):
        raise TunesmithError(
            f"{repo_id!r} is not a repository id of the form user/name",
            where="--repo",
            fix="pass the account or organisation and the model name, e.g. --repo alice/support-bot-lora",
        )


def _token(given: str | None) -> str:
    """--token, then HF_TOKEN, then the token `huggingface-cli login` saved."""
    from huggingface_hub import get_token

    token = given or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise TunesmithError(
            "no Hugging Face token: pushing needs a token with write access",
            where="--token",
            fix="run `huggingface-cli login` (or `hf auth login`), set HF_TOKEN, or pass --token; "
            "create a write token at https://huggingface.co/settings/tokens",
        )
    return token


def _endpoint(given: str | None) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise TunesmithError(
            "the Hugging Face Hub is switched off: HF_HUB_OFFLINE is set, so no upload can be made",
            where="HF_HUB_OFFLINE",
            fix="unset HF_HUB_OFFLINE (or set it to 0) for the push",
        )
    return (given or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _check_reachable(endpoint: str) -> None:
    """One quick request before staging a merged export or sending weights: an unreachable hub is
    reported in seconds, naming the address, not after the client's retries."""
    try:
        with urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=REACH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # the server answered (401 without a token is the usual answer): reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TunesmithError(
            f"cannot reach the hub at {endpoint}: {reason}",
            where="--endpoint",
            fix="check the network connection (and a proxy), or pass the right --endpoint / HF_ENDPOINT",
        ) from exc


def _stage_weights(weights: Path, staging: Path, merged: bool, run_path: Path, allow_pickle: bool) -> None:
    if merged:
        from tunesmith.export import export_run

        # export_run writes the merged weights and checks them against the run's own model: a merged model
        # that answers differently from the adapter is refused here, not published.
        export_run(run_path, "merged", staging, options={"allow_pickle": allow_pickle})
        return
    staging.mkdir()
    for path in weights.rglob("*"):
        if path.is_file() and path.relative_to(weights).as_posix() not in _SKIPPED_WEIGHT_FILES:
            target = staging / path.relative_to(weights)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _upload(staging: Path, repo_id: str, private: bool, token: str, endpoint: str, run_name: str) -> tuple[str, str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"Upload {run_name} with tunesmith",
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise TunesmithError(
            f"the hub at {endpoint} refused the push to {repo_id} (HTTP {status}): {exc}",
            where="--repo",
            fix=_http_fix(status),
        ) from exc
    return str(repo_url), str(commit.commit_url)


def _http_fix(status: int | None) -> str:
    if status == 401:
        return "the token was rejected: log in again (`huggingface-cli login`) or pass a valid --token / HF_TOKEN"
    if status == 403:
        return "the token cannot write to this namespace: use a write token, or a repo under your own account"
    return "check the repository id and try again; the hub's message is above"
