"""Publish a training run's exported model to the Hugging Face Hub, with its model card.

    python -m hybatch.publish <run dir> repo_id=<user/name> [private=true] [branch=main] [tag=<name>]

Uploads `<run dir>/model/` in ONE commit whose message names the run (sampler, alpha, languages, test
multi mAP, hybatch commit), with the card of `hybatch.model_card` as README.md (built in memory, for
the repo id), then tags that commit with the run's name (default `hybatch-<run dir name>`), so every
published run stays addressable as a revision. The hub is asked who the user is before anything
else: offline, without a token or unreachable, it stops at once with the reason and nothing changes,
locally or on the hub. Authentication: `hf auth login` or HF_TOKEN.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hybatch.model_card import RunDirError, build_model_card

KEYS = {"repo_id", "private", "branch", "tag"}


class PublishError(RuntimeError):
    """The run cannot be published: bad arguments, no model, offline, no token, or the hub refused."""


def parse_args(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """`<run dir> key=value ...` (keys: repo_id, private, branch, tag)."""
    if not argv or "=" in argv[0]:
        raise PublishError("usage: python -m hybatch.publish <run dir> repo_id=<user/name> [private=true] [branch=main] [tag=<name>]")
    options: dict[str, Any] = {"private": False, "branch": "main", "tag": None}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise PublishError(f"argument {arg!r}: expected key=value with a key among {sorted(KEYS)}")
        if key == "private":
            if value.lower() not in ("true", "false"):
                raise PublishError(f"private={value!r}: expected true or false")
            options[key] = value.lower() == "true"
        else:
            options[key] = value
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", options.get("repo_id") or ""):
        raise PublishError(f"repo_id={options.get('repo_id')!r}: expected <user or organisation>/<model name>")
    return Path(argv[0]), options


def commit_message(run_dir: Path) -> str:
    """One line naming what the run trained and how well it did."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8")) if (run_dir / "run_info.json").is_file() else {}
    sampler = str(OmegaConf.select(cfg, "sampler._target_", default="?")).rsplit(".", 1)[-1]
    alpha = OmegaConf.select(cfg, "sampler.alpha", default=None)
    languages = ",".join(OmegaConf.select(cfg, "data.languages", default=[]) or [])
    parts = [f"hybatch run {run_dir.name}: {sampler}" + (f" alpha={alpha}" if alpha is not None else ""), f"languages {languages}"]
    if metrics.get("test/multi/mAP") is not None:
        parts.append(f"test multi mAP {metrics['test/multi/mAP']:.4f}")
    commit = (info.get("git") or {}).get("commit")
    if commit:
        parts.append(f"hybatch {commit[:12]}")
    return "; ".join(parts)


def _check_hub(api: Any) -> str:
    """The user name the token belongs to; a PublishError when offline, logged out or unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise PublishError("the Hugging Face hub is in offline mode (HF_HUB_OFFLINE=1): nothing was uploaded")
    try:
        return str(api.whoami()["name"])
    except OfflineModeIsEnabled as err:
        raise PublishError(f"the Hugging Face hub is in offline mode: nothing was uploaded ({err})") from err
    except LocalTokenNotFoundError as err:
        raise PublishError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN; nothing was uploaded") from err
    except Exception as err:  # noqa: BLE001 - network errors come from the HTTP client: say what failed, change nothing
        raise PublishError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({type(err).__name__}: {err}); nothing was uploaded") from err


def check_can_publish(repo_id: str) -> str:
    """Before a run trains with `hub.push=true`: the repo id is well-formed and the hub answers with a
    user (a PublishError otherwise), so an offline run fails at once instead of after training."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise PublishError(f"hub.repo_id={repo_id!r}: expected <user or organisation>/<model name>")
    from huggingface_hub import HfApi

    return _check_hub(HfApi())


def publish_run(run_dir: str | Path, repo_id: str, *, private: bool = False, branch: str = "main", tag: str | None = None) -> str:
    """Upload `<run dir>/model` to `repo_id` (created when missing) and tag the commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not model_dir.is_dir() or not (model_dir / "modules.json").is_file():
        raise PublishError(f"{model_dir} holds no exported model (modules.json): train with export_model=true")
    try:
        card = build_model_card(run_dir, name=repo_id)
        message = commit_message(run_dir)
    except (RunDirError, OSError, ValueError) as err:
        raise PublishError(f"{run_dir}: {err}") from err
    tag = tag or re.sub(r"[^\w.-]", "-", f"hybatch-{run_dir.resolve().name}")
    api = HfApi()
    user = _check_hub(api)
    # Hidden files (editor and notebook caches) are not part of the model.
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != "README.md"
                   and not any(part.startswith(".") for part in p.relative_to(model_dir).parts))  # fmt: skip
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(model_dir).as_posix(), path_or_fileobj=str(p)) for p in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        # Checked before uploading: a tag that exists would fail only after the commit landed.
        if any(ref.name == tag for ref in api.list_repo_refs(repo_id).tags):
            raise PublishError(f"{repo_id} already has the tag {tag!r}: give another with tag=...")
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=message, revision=branch)
        api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message)
    except PublishError:
        raise
    except Exception as err:  # noqa: BLE001 - any hub failure (HTTP, permissions, network) is reported as one
        raise PublishError(f"uploading {model_dir} to {repo_id} failed: {type(err).__name__}: {err}") from err
    print(f"{user}: uploaded {len(operations)} files of {model_dir} to {repo_id}@{branch}, tagged {tag}: {commit.commit_url}")
    return str(commit.commit_url)


def main(argv: list[str] | None = None) -> None:
    try:
        run_dir, options = parse_args(sys.argv[1:] if argv is None else argv)
        publish_run(run_dir, options["repo_id"], private=options["private"], branch=options["branch"], tag=options["tag"])
    except PublishError as err:
        sys.exit(f"hybatch.publish: {err}")


if __name__ == "__main__":
    main()
