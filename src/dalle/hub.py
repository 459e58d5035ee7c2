"""The Hugging Face Hub: a local folder or an `owner/name` repository id, and pushing files up.

Every `from_pretrained` takes a folder or a Hub id (`owner/name`, or `owner/name@revision` for a
branch, tag or commit). A folder that exists always wins over an id spelled the same; anything
that cannot be an id (`./x`, `/x`, `a/b/c`) stays a path. An id is fetched with
`huggingface_hub.snapshot_download` into its cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`), so `HF_HUB_OFFLINE=1` loads what the cache holds and never touches
the network. Pushing uploads a chosen set of files with `HfApi.create_repo` + `upload_folder`;
the token is huggingface_hub's own (`hf auth login`, or `HF_TOKEN`).

Model cards carry the Hub's YAML front matter (licence, tags, pipeline tag, library, datasets):
`with_front_matter` adds it to a card's text. huggingface_hub is imported only when it is used,
so the CLI starts as fast without it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dalle.errors import DalleError

# What a card says about every dalle model on the Hub; a card's own values win (`with_front_matter`).
CARD_METADATA: dict[str, Any] = {"library_name": "dalle", "pipeline_tag": "text-to-image",
                                 "tags": ["dalle", "dall-e", "text-to-image", "pytorch"]}
# owner/name with an optional @revision; huggingface_hub's validator then checks the id's rules.
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?", re.ASCII)


def parse_hub_id(name: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `name` reads as `owner/name[@revision]`, else None.

    A `Path` is never an id: only a string can name a Hub repository."""
    if not isinstance(name, str):
        return None
    match = _HUB_ID.fullmatch(name)
    if match is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return match["repo"], match["revision"]


def resolve(name: str | Path, subfolder: str | None = None) -> Path:
    """The local directory `name` stands for (its `subfolder` when given): a folder as it is, a Hub
    id as its snapshot in the local cache, downloaded first when the Hub is reachable."""
    local = Path(name)
    hub = None if local.exists() else parse_hub_id(name)
    if hub is None:
        return local / subfolder if subfolder else local
    repo_id, revision = hub
    root = download(repo_id, revision, [f"{subfolder}/*"] if subfolder else None)
    if subfolder is None:
        return root
    if not (root / subfolder).is_dir():
        raise FileNotFoundError(f"the Hub repository {repo_id} has no {subfolder}/ folder")
    return root / subfolder


def cache_dir() -> str:
    """Where huggingface_hub keeps downloads, read when called (tests set it after import)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, as huggingface_hub reads it (its constant, so that a test
    can set it after the import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def download(repo_id: str, revision: str | None = None,
             allow_patterns: list[str] | None = None) -> Path:
    """The snapshot of `repo_id` at `revision` (default: main) in the local cache, fetched first
    unless HF_HUB_OFFLINE is set; whatever goes wrong is one line saying what to do."""
    from huggingface_hub import errors, snapshot_download

    label = repo_id + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                      library_name="dalle"))
    except errors.GatedRepoError:
        raise DalleError(f"the Hub repository {repo_id} is gated: accept its conditions on its page, "
                         "then log in (`hf auth login`, or set HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id} is neither a local folder nor a Hub repository you can "
                                "read (a private one needs `hf auth login` or HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"the Hub repository {repo_id} has no revision {revision!r}") from None
    except errors.LocalEntryNotFoundError as e:
        # Raised for what the cache lacks when the Hub is out of reach: HF_HUB_OFFLINE, no network,
        # or (huggingface_hub 2's IncompleteSnapshotError) a download that stopped part way.
        where = f"the Hub cache {cache_dir()}"
        if type(e).__name__ == "IncompleteSnapshotError":
            problem = f"the copy of {label} in {where} is incomplete"
        else:
            problem = f"{label} is not a local folder, and not in {where}"
        if offline():
            raise FileNotFoundError(
                f"{problem}, and HF_HUB_OFFLINE=1 keeps the Hub out of reach: download it once with "
                "the Hub reachable (unset HF_HUB_OFFLINE), point HF_HUB_CACHE or HF_HOME at a cache "
                "that holds it, or give a local folder") from None
        raise FileNotFoundError(f"{problem}, and the Hub could not be reached: check the network "
                                "(or HTTPS_PROXY), or give a local folder") from None
    except errors.HfHubHTTPError as e:
        raise DalleError(f"the Hub refused {label}: {_first_line(e)}") from None


def with_front_matter(card: str, metadata: dict[str, Any]) -> str:
    """`card` (a README.md's text) led by the Hub's YAML front matter: what the card's own front
    matter already says stays, `metadata` and then CARD_METADATA fill in the rest (tags are
    merged), written by huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCard, ModelCardData

    existing: dict[str, Any] = {}
    body = card
    if card.startswith("---"):
        parsed = ModelCard(card, ignore_metadata_errors=True)
        existing, body = parsed.data.to_dict(), parsed.text
    merged = {**CARD_METADATA, **metadata, **existing}
    tags = [*CARD_METADATA["tags"], *metadata.get("tags", []), *existing.get("tags", [])]
    merged["tags"] = list(dict.fromkeys(tags))
    return f"---\n{ModelCardData(**merged).to_yaml()}\n---\n\n{body.lstrip(chr(10))}"


def read_front_matter(card: str) -> dict[str, Any]:
    """The metadata in a card's YAML front matter ({} when it has none)."""
    from huggingface_hub import ModelCard

    return ModelCard(card, ignore_metadata_errors=True).data.to_dict() if card.startswith("---") else {}


def upload(files: dict[str, Path], card: str, repo_id: str, *, private: bool | None = None,
           revision: str | None = None, commit_message: str | None = None,
           token: str | None = None) -> str:
    """Upload exactly `files` (path in the repository -> local file) and `card` as README.md to
    the Hub repository `repo_id` (created when missing; `private` applies only then) on branch
    `revision` (created from main when missing); returns the repository's URL.

    The files are linked into a staging folder, so upload_folder sends that set and nothing else
    from where they live (no checkpoints, no hidden files)."""
    from huggingface_hub import HfApi, errors

    if offline():
        raise DalleError("HF_HUB_OFFLINE=1 is set: pushing needs the Hub (unset it)")
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise DalleError(f"{repo_id!r} is not a Hub repository id: write owner/name "
                         "(--branch for a branch)")
    api = HfApi(token=token, library_name="dalle")
    try:
        with tempfile.TemporaryDirectory(prefix="dalle-push-") as staging:
            root = Path(staging)
            for name, source in files.items():
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(source, target)
            (root / "README.md").write_text(card, encoding="utf-8")
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            if revision not in (None, "main"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=root, revision=revision,
                              commit_message=commit_message or "Upload dalle pipeline")
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = (": log in with `hf auth login` or set HF_TOKEN, with a token that may write to "
                f"{repo_id}" if status in (401, 403) else "")
        raise DalleError(f"the Hub refused the push to {repo_id} ({_first_line(e)}){hint}") from None
    except _transport_errors() as e:
        raise DalleError(f"could not reach the Hub to push {repo_id} ({_first_line(e)}): check the "
                         "network (or HTTPS_PROXY)") from None
    return str(url)


def _link_or_copy(source: Path, target: Path) -> None:
    """A symbolic link to `source` (no copy of large weights), or a copy where links are refused
    (Windows without developer mode)."""
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP client raises when the Hub cannot be reached: httpx2's errors in
    huggingface_hub 2, httpx's in 1."""
    try:
        import httpx2

        return (httpx2.TransportError,)
    except ImportError:
        import httpx

        return (httpx.TransportError,)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
