"""Model references: a local directory, or a Hugging Face Hub id fetched into the Hub's own cache.

Every loader of a model directory (editors, Emu3 checkpoints and their vision tokenizer, decomposers,
reward models, recipes' `init_from`) passes what the user wrote through `resolve_model` first, so a
user can write what they write everywhere else in the field:

    UnifiedEditor.from_pretrained("mair-lab/earl-sft-simple.rl-simple-n-complex-scaled")
    UnifiedEditor.from_pretrained("org/name", revision="v1")    # a branch, tag or commit hash
    init_from: org/name@3f2a...                                 # in a recipe: `@revision` after the id

The rules, in order:
1. a path that exists on disk is used as it is (a local directory wins over a Hub id of the same spelling);
2. a string shaped like a Hub id (`org/name`, optionally `@revision`) is downloaded with
   `huggingface_hub.snapshot_download` into its cache (`cache_dir`, else `HF_HUB_CACHE`/`HF_HOME`),
   with the token `huggingface_hub` finds (`HF_TOKEN`, or `hf auth login`): earl never takes a token
   in a recipe or on the command line, so none ends up in a saved config;
3. anything else is returned as a path, and the caller's own "not found" error names it.

`HF_HUB_OFFLINE=1` is honoured as set when the model is loaded (not only at import): the cache alone
is read, and an id missing from it is an error naming the id and `HF_HUB_OFFLINE`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from earl.errors import EarlError

# org/name as the Hub spells them (letters, digits, '-', '_', '.'), with an optional @revision
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def split_hub_id(ref: str) -> tuple[str, str | None] | None:
    """`org/name[@revision]` -> (repo id, revision or None); None when `ref` is not shaped like a Hub id.

    >>> split_hub_id("mair-lab/earl@v1")
    ('mair-lab/earl', 'v1')
    >>> split_hub_id("./runs/sft/model") is None
    True
    """
    m = _HUB_ID.match(ref)
    if m is None or ref.startswith(".") or ".." in m["repo"] or m["repo"].endswith((".yaml", ".json")):
        return None
    return m["repo"], m["revision"]


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now: a test or a notebook may set it after import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def resolve_model(ref: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  what: str = "model") -> Path:
    """The local directory `ref` names: itself if it exists, else the Hub snapshot of the id (see the module doc).

    `what` names the thing in errors ("vision tokenizer", "init_from", ...)."""
    if os.path.exists(ref):
        if revision is not None:
            raise EarlError(f"{what} {ref}: a local path, but revision={revision!r} was given (a revision "
                            "applies to a Hub id; move or rename the local directory to load the id)")
        return Path(ref)
    parsed = split_hub_id(os.fspath(ref))
    if parsed is None:
        return Path(ref)
    repo_id, at = parsed
    if at is not None and revision is not None and at != revision:
        raise EarlError(f"{what} {ref}: revision {at!r} in the id and revision={revision!r} disagree; give one")
    return download(repo_id, revision or at, cache_dir, what)


def download(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
             what: str = "model") -> Path:
    """`snapshot_download` of a model repository, its errors turned into ones that say what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    is_offline = offline()
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")  # read now, as HF_HUB_OFFLINE
    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=is_offline,
                                      library_name="earl"))
    except GatedRepoError:
        raise EarlError(f"{what} {repo_id}: a gated repository; accept its terms on "
                        f"https://huggingface.co/{repo_id} and set HF_TOKEN to a token of that account") from None
    except RepositoryNotFoundError:
        raise EarlError(f"{what} {repo_id}: no local directory of that name and no such repository on the Hugging "
                        "Face Hub (or it is private: set HF_TOKEN); check the path or the id") from None
    except RevisionNotFoundError:
        raise EarlError(f"{what} {repo_id}: revision {revision!r} not found (expected a branch, tag or commit "
                        "hash of the repository)") from None
    except LocalEntryNotFoundError:
        where = f"the Hub cache {_cache_dir(cache_dir)}"
        if is_offline:
            raise EarlError(f"{what} {repo_id}{at}: no local directory of that name, and as a Hub id it is not in "
                            f"{where} while HF_HUB_OFFLINE is set; download it once with HF_HUB_OFFLINE unset, "
                            "or give a local directory") from None
        raise EarlError(f"{what} {repo_id}{at}: no local directory of that name, the Hugging Face Hub could not "
                        f"be reached and it is not in {where}; check the path, or the connection") from None
    except HfHubHTTPError as e:
        raise EarlError(f"{what} {repo_id}{at}: download failed ({e})") from None


def _cache_dir(cache_dir) -> str:
    from huggingface_hub import constants

    return os.fspath(cache_dir or constants.HF_HUB_CACHE)



def upload(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None,
           commit_message: str | None = None, repo_type: str = "model") -> str:
    """Upload `folder` as it is to the `repo_type` repository `repo_id` (created if absent); returns the
    commit's URL.

    `token` None: the one `huggingface_hub` finds (HF_TOKEN, or `hf auth login`); it needs write access.
    `private` None keeps an existing repository's visibility (a new one is public)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise EarlError(f"{folder}: not a directory (expected a {repo_type} folder written by earl)")
    parsed = split_hub_id(repo_id)
    if parsed is None or parsed[1] is not None:
        raise EarlError(f"repo id {repo_id!r}: expected 'org/name' (a Hub {repo_type} repository, no @revision)")
    if offline():
        raise EarlError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    api = HfApi(token=token, library_name="earl")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type,
                                 commit_message=commit_message or f"Upload {folder.name} with earl")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        fix = " (set HF_TOKEN to a token with write access to it)" if status in (401, 403) else ""
        raise EarlError(f"push to {repo_id} failed{fix}: {e}") from None
    return str(getattr(info, "commit_url", info))
