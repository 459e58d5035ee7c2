"""The Hugging Face Hub with no network: a pipeline pushed (the upload replaced only where it
would reach the network), laid into a cache exactly as huggingface_hub lays out a download, and
loaded back by its id with HF_HUB_OFFLINE=1, draws what its folder draws."""

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, scan_cache_dir
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from huggingface_hub.utils.sha import git_hash
from PIL import Image

from dalle.card import assembly_card
from dalle.clip import CLIP
from dalle.errors import DalleError
from dalle.hub import CARD_METADATA, parse_hub_id, read_front_matter, with_front_matter
from dalle.pipeline import BUNDLED_DIR, DallePipeline, bundled_pipelines, push_pipeline
from dalle.prior import Prior
from dalle.recipe import build_recipe
from dalle.text import TextTokenizer
from dalle.vae import DiscreteVAE
from test_cli import dalle, one_line_error
from test_pipeline import tiny_pipeline

REPO = "someone/tiny-dalle"
COMMIT = hashlib.sha1(b"the first commit").hexdigest()
PIPELINE_FILES = {"tokenizer/tokenizer.json", "tokenizer/config.json", "sampling.json",
                  *(f"{part}/{name}" for part in ("vae", "prior", "clip")
                    for name in ("config.json", "model.safetensors"))}
DOCUMENTS = {"README.md", "ATTRIBUTION.md", "licenses/LICENSE-data.txt"}
JUNK = {"prior/checkpoint.pt", "training-state.pkl", ".notes", ".git/HEAD", "licenses/.DS_Store",
        "vae/.model.safetensors.x1y2.tmp", "vae/samples/step-100.png"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny pipeline with a card that has no front matter, the data's notices, and what must
    never go up: checkpoints, pickles, hidden files, a part's training samples."""
    folder = tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("hub") / "pipeline")
    (folder / "README.md").write_text("# tiny pipeline\n\nTrained on twelve captions.\n")
    (folder / "ATTRIBUTION.md").write_text("Images by the tests, CC0.\n")
    (folder / "licenses").mkdir()
    (folder / "licenses" / "LICENSE-data.txt").write_text("CC0 1.0\n")
    for name in JUNK:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not for the Hub")
    return folder


class FakeHub:
    """HfApi's three network calls of a push, answered here: what upload_folder would send is
    read as it reads it (every file under the folder, its patterns and default ignores applied)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple] = []
        self.files: dict[str, bytes] = {}
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_repo", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            hub.calls.append(("create_branch", repo_id, branch, exist_ok))

        def upload_folder(api, *, repo_id, folder_path, revision=None, commit_message=None,
                          allow_patterns=None, ignore_patterns=None, **kwargs):
            root = Path(folder_path)
            listed = [p.relative_to(root).as_posix() for p in sorted(root.glob("**/*")) if p.is_file()]
            ignored = [*([ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or []),
                       *DEFAULT_IGNORE_PATTERNS]
            sent = filter_repo_objects(listed, allow_patterns=allow_patterns, ignore_patterns=ignored)
            hub.files = {name: (root / name).read_bytes() for name in sent}
            hub.calls.append(("upload_folder", repo_id, revision, commit_message))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def lay_into_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """`files` as huggingface_hub's download leaves a repository in its cache: content in
    blobs/ (named by sha256 for LFS files, which *.safetensors are on the Hub, else by git blob
    sha1), snapshots/<commit>/ of relative symbolic links to them, refs/main naming the commit,
    and (huggingface_hub 2) the commit's file listing in trees/<commit>.json."""
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    listing = {}
    for name, data in files.items():
        lfs = name.endswith(".safetensors")
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        blob = storage / "blobs" / (sha256 if lfs else git_hash(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
        listing[name] = ({"size": len(data), "blob_id": git_hash(pointer.encode()), "lfs_sha256": sha256,
                          "lfs_size": len(data)} if lfs else {"size": len(data), "blob_id": git_hash(data)})
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return storage / "snapshots" / commit


@pytest.fixture(scope="module")
def pushed(folder, tmp_path_factory) -> dict[str, bytes]:
    """What `push_pipeline(folder)` sends, with the repository's own .gitattributes beside it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        hub = FakeHub(monkeypatch)
        push_pipeline(folder, REPO)
    return {**hub.files, ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}


@pytest.fixture()
def offline_cache(pushed, tmp_path, monkeypatch) -> Path:
    """The pushed repository in a fresh Hub cache, and the Hub offline (huggingface_hub reads
    both settings into its constants at import, so they are set there)."""
    cache = tmp_path / "hub-cache"
    lay_into_hub_cache(cache, REPO, pushed)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_the_laid_out_cache_is_one_huggingface_hub_recognises(offline_cache, pushed):
    info = scan_cache_dir(offline_cache)
    assert not info.warnings
    (repo,) = info.repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, set(revision.refs)) == (REPO, COMMIT, {"main"})
    assert {str(f.file_path.relative_to(revision.snapshot_path)) for f in revision.files} == set(pushed)


def test_a_pipeline_loaded_by_its_hub_id_offline_draws_what_its_folder_draws(folder, offline_cache):
    expected = DallePipeline.from_pretrained(folder)("a large red circle", images=2, candidates=4, seed=3)
    for name in (REPO, f"{REPO}@main", f"{REPO}@{COMMIT}"):
        pipe = DallePipeline.from_pretrained(name)
        assert pipe.source is not None and pipe.source.is_relative_to(offline_cache), name
        out = pipe("a large red circle", images=2, candidates=4, seed=3)
        assert torch.equal(out.images, expected.images) and torch.equal(out.codes, expected.codes), name


def test_each_part_loads_by_hub_id_from_its_subfolder(folder, offline_cache):
    for cls, part in ((DiscreteVAE, "vae"), (Prior, "prior"), (CLIP, "clip")):
        by_id = cls.from_pretrained(REPO, subfolder=part).state_dict()
        local = cls.from_pretrained(folder / part).state_dict()
        assert by_id.keys() == local.keys() and all(torch.equal(by_id[k], local[k]) for k in local), part
    tokenizer = TextTokenizer.from_pretrained(REPO, subfolder="tokenizer")
    assert torch.equal(tokenizer.encode("a red circle"),
                       TextTokenizer.from_pretrained(folder / "tokenizer").encode("a red circle"))
    with pytest.raises(FileNotFoundError, match=f"the Hub repository {REPO} has no unet/ folder"):
        Prior.from_pretrained(REPO, subfolder="unet")


def test_a_folder_that_exists_wins_over_a_hub_id_spelled_the_same(folder, offline_cache, tmp_path,
                                                                    monkeypatch):
    local = tmp_path / REPO
    tiny_pipeline(with_clip=False).save_pretrained(local)
    monkeypatch.chdir(tmp_path)
    pipe = DallePipeline.from_pretrained(REPO)
    assert pipe.source == Path(REPO) and pipe.clip is None  # the folder's, not the Hub's with CLIP
    assert DallePipeline.from_pretrained("emoji").source == BUNDLED_DIR / "emoji"


def test_only_owner_slash_name_strings_read_as_hub_ids():
    assert parse_hub_id("owner/name") == ("owner/name", None)
    assert parse_hub_id("owner/my.model-2@refs/pr/1") == ("owner/my.model-2", "refs/pr/1")
    for path in ("shapes", "./owner/name", "/owner/name", "runs/emoji/pipeline", "owner/na--me",
                 "owner/name.git", "owner/-name", Path("owner/name"), "owner/name@"):
        assert parse_hub_id(path) is None, path


def test_offline_a_repository_missing_from_the_cache_is_one_line_saying_what_to_do(offline_cache):
    with pytest.raises(FileNotFoundError) as caught:
        DallePipeline.from_pretrained("someone/absent")
    message = str(caught.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message and str(offline_cache) in message
    r = dalle("generate", "a red circle", "--pipeline", "someone/absent", "--out", offline_cache / "out",
              env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": offline_cache})
    one_line_error(r, "someone/absent is not a local folder, and not in the Hub cache")


def test_offline_a_snapshot_cut_short_is_named_incomplete(offline_cache):
    (offline_cache / repo_folder_name(repo_id=REPO, repo_type="model") / "snapshots" / COMMIT
     / "prior" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"the copy of {REPO} in the Hub cache .* is incomplete, "
                                                "and HF_HUB_OFFLINE=1"):
        DallePipeline.from_pretrained(REPO)


def test_the_cli_generates_from_a_hub_id_offline_what_it_generates_from_the_folder(folder, pushed,
                                                                                  tmp_path, monkeypatch):
    """Through HF_HOME this time: the cache is its hub/ folder."""
    lay_into_hub_cache(tmp_path / "home" / "hub", REPO, pushed)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)  # it would win over HF_HOME
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    for name, pipeline in (("folder", folder), ("hub", REPO)):
        r = dalle("generate", "a large red circle", "--pipeline", pipeline, "--out", tmp_path / name,
                  "--images", 2, "--device", "cpu", "--seed", 5, env=offline)
        assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "folder").glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in (tmp_path / "hub").glob("*.png"))
    for png in pngs:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "folder" / png)),
                              np.asarray(Image.open(tmp_path / "hub" / png))), png


def test_a_push_sends_the_parts_the_card_with_front_matter_and_the_notices_and_nothing_else(folder, pushed):
    sent = set(pushed) - {".gitattributes"}
    assert sent == PIPELINE_FILES | DOCUMENTS and not sent & JUNK
    for name in sent - {"README.md"}:
        assert pushed[name] == (folder / name).read_bytes(), name
    card = pushed["README.md"].decode()
    assert card.endswith((folder / "README.md").read_text())  # the card, led by its front matter
    assert read_front_matter(card) == {**CARD_METADATA, "license": "unknown"}


def test_push_creates_the_repository_and_a_branch_and_commits_to_it(folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub(monkeypatch)
    url = push_pipeline(folder, REPO, private=True, revision="v2", commit_message="a smaller prior")
    assert url == f"https://huggingface.co/{REPO}"
    assert hub.calls == [("create_repo", REPO, True, True), ("create_branch", REPO, "v2", True),
                         ("upload_folder", REPO, "v2", "a smaller prior")]


def test_push_to_hub_saves_a_loaded_pipeline_with_its_documents(folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub(monkeypatch)
    DallePipeline.from_pretrained(folder).push_to_hub(REPO)
    assert set(hub.files) == PIPELINE_FILES | DOCUMENTS
    assert hub.files["prior/model.safetensors"] == (folder / "prior" / "model.safetensors").read_bytes()
    # A pipeline made in Python has no card: it gets one that says how to use it and what it lacks.
    tiny_pipeline().push_to_hub(REPO)
    card = hub.files["README.md"].decode()
    assert f'DallePipeline.from_pretrained("{REPO}")' in card and "without a model card" in card
    assert read_front_matter(card)["pipeline_tag"] == "text-to-image"


def test_push_refuses_what_is_not_a_pipeline_and_an_offline_hub_in_one_line(folder, tmp_path,
                                                                             monkeypatch):
    (tmp_path / "photos").mkdir()
    r = dalle("push", tmp_path / "photos", REPO, env={"HF_HUB_OFFLINE": "1"})
    one_line_error(r, "is not a pipeline: it has no tokenizer, vae, prior/")
    broken = tmp_path / "broken"
    DallePipeline.from_pretrained(folder).save_pretrained(broken)
    (broken / "prior" / "model.safetensors").unlink()
    hub = FakeHub(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError, match="not a complete pipeline: it has no prior/model.safetensors"):
        push_pipeline(broken, REPO)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DalleError, match="HF_HUB_OFFLINE=1 is set: pushing needs the Hub"):
        push_pipeline(folder, REPO)
    assert hub.calls == []


def test_push_names_a_bad_repository_id(folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    FakeHub(monkeypatch)
    for bad in ("tiny-dalle", "someone/tiny dalle", "someone/tiny-dalle@v2"):
        with pytest.raises(DalleError, match="is not a Hub repository id"):
            push_pipeline(folder, bad)


def test_front_matter_keeps_what_a_card_says_and_adds_the_rest():
    card = "---\nlicense: apache-2.0\ntags:\n- emoji\n---\n\n# mine\n"
    merged = with_front_matter(card, {"license": "mit", "datasets": ["owner/data"]})
    assert merged.endswith("\n---\n\n# mine\n")
    assert read_front_matter(merged) == {**CARD_METADATA, "license": "apache-2.0", "datasets": ["owner/data"],
                                         "tags": [*CARD_METADATA["tags"], "emoji"]}
    assert with_front_matter(merged, {}) == merged


@pytest.mark.parametrize("name", ["shapes", "emoji"])
def test_bundled_cards_carry_the_front_matter_their_recipe_writes(name):
    card = (BUNDLED_DIR / name / "README.md").read_text()
    metadata = build_recipe(name, Path("$RUN"), "cpu").metadata
    assert read_front_matter(card) == {**CARD_METADATA, **metadata}
    assert card == with_front_matter(card.split("\n---\n\n", 1)[1], metadata)
    assert metadata["license"] == {"shapes": "mit", "emoji": "other"}[name]


def test_the_emoji_licence_names_each_licence_of_its_data():
    """The art is Apache-2.0 (Google) and CC-BY-4.0 (Twitter), the captions MIT: ATTRIBUTION.md."""
    attribution = (BUNDLED_DIR / "emoji" / "ATTRIBUTION.md").read_text()
    assert all(terms in attribution for terms in ("Apache License 2.0", "CC-BY 4.0", "MIT licence"))
    assert read_front_matter((BUNDLED_DIR / "emoji" / "README.md").read_text())["license_name"] == \
        "apache-2.0-and-cc-by-4.0-and-mit"
    assert bundled_pipelines() == ["emoji", "shapes"]


def test_the_assembly_card_says_the_licence_is_unknown(folder, tmp_path):
    pipe = DallePipeline.from_pretrained(folder)
    card = assembly_card(pipe, tmp_path / "vae", tmp_path / "prior", None, [])
    assert read_front_matter(card) == {**CARD_METADATA, "license": "unknown"}
    assert "\n# dalle pipeline\n" in card
