import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle.data import emoji
from dalle.data.emoji import (
    VALIDATION_SPLIT,
    caption,
    code_point_key,
    held_out_style,
    validation_style,
    write_emoji,
)
from dalle.data.folder import ImageCaptionFolder, read_captions
from dalle.errors import DalleError

SKIN = "1F3FB"


def _pick_codes() -> dict[str, list[str]]:
    """Code points by their fate under the hold-out rule: plain, held out in google / twitter."""
    found: dict[str, list[str]] = {"plain": [], "google": [], "twitter": []}
    for cp in range(0x1F300, 0x1F700):
        if not validation_style(f"{cp:X}"):
            found[held_out_style(f"{cp:X}") or "plain"].append(f"{cp:X}")
    return found


CODES = _pick_codes()
P1, P2, P3 = CODES["plain"][:3]
HG, HT = CODES["google"][0], CODES["twitter"][0]
# (datasource code point, emojibase hexcode, label, tags, skin-tone label or None)
EMOJI = [
    (P1, P1, "Grinning Face", ["face", "grin", "grinning"], "grinning face: light skin tone"),
    (f"{P2}-FE0F", P2, "Flag: Côte d’Ivoire", [], None),
    (P3, P3, "red heart", ["love"], None),
    (HG, HG, "waving hand", ["wave"], "waving hand: light skin tone"),
    (HT, HT, "thumbs up", [], None),
]


def colour(code: str, style: str) -> tuple[int, int, int]:
    return tuple(hashlib.md5(f"{code}{style}".encode()).digest()[:3])


def write_png(path: Path, rgb: tuple[int, int, int]) -> None:
    """64x64 RGBA: an opaque square of `rgb` on a transparent ground."""
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[16:48, 16:48] = (*rgb, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)


def write_fluent(path: Path, rgb: tuple[int, int, int]) -> None:
    """A LobeHub asset: an SVG (32-unit view box) or a lossless WebP, an opaque square of `rgb` in
    the middle half on a transparent ground."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".svg":
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
                        f'<rect x="8" y="8" width="16" height="16" fill="#{bytes(rgb).hex()}"/></svg>')
    else:
        pixels = np.zeros((64, 64, 4), np.uint8)
        pixels[16:48, 16:48] = (*rgb, 255)
        Image.fromarray(pixels, "RGBA").save(path, lossless=True)


def make_source(root: Path) -> Path:
    """The npm packages, unpacked as `<root>/<name>/` (a tiny node_modules)."""
    data = []
    for _unified, hexcode, label, tags, skin in EMOJI:
        entry = {"label": label, "hexcode": hexcode, "tags": tags}
        if skin:
            entry["skins"] = [{"label": skin, "hexcode": f"{hexcode}-{SKIN}"}]
        data.append(entry)
    base = root / emoji.LABEL_PACKAGE
    (base / "en").mkdir(parents=True)
    (base / "en" / "data.json").write_text(json.dumps(data), encoding="utf-8")
    (base / "package.json").write_text('{"version": "17.0.0"}')
    (base / "LICENSE").write_text("MIT License (emojibase)")
    for style, suffix in emoji.FLUENT_SUFFIXES.items():
        package = root / emoji.IMAGE_PACKAGES[style]
        for unified, *_, skin in EMOJI:
            for code in [code_point_key(unified)] + ([f"{unified}-{SKIN}"] if skin else []):
                write_fluent(package / "assets" / f"{code.lower()}{suffix}", colour(code, style))
        (package / "package.json").write_text('{"version": "1.1.0"}')
    for style in emoji.DEFAULT_STYLES:
        name = emoji.IMAGE_PACKAGES[style]
        package, catalogue = root / name, []
        for unified, *_, skin in EMOJI:
            folder = package / "img" / style / "64"
            entry = {"unified": unified, "image": f"{unified.lower()}.png",
                     f"has_img_{style}": True}
            write_png(folder / entry["image"], colour(unified, style))
            if skin:
                code = f"{unified}-{SKIN}"
                entry["skin_variations"] = {SKIN: {
                    "unified": code, "image": f"{code.lower()}.png", f"has_img_{style}": True}}
                write_png(folder / f"{code.lower()}.png", colour(code, style))
            catalogue.append(entry)
        (package / "emoji.json").write_text(json.dumps(catalogue))
        (package / "package.json").write_text('{"version": "16.0.0"}')
        (package / "LICENSE").write_text(f"MIT License ({name})")
    return root


def pack(source: Path, dest: Path) -> Path:
    """Turn an unpacked source into the `npm pack` layout: `<name>-<version>.tgz` files."""
    dest.mkdir()
    for name in emoji.VERSIONS:
        with tarfile.open(dest / emoji.tarball_name(name), "w:gz") as tar:
            tar.add(source / name, arcname="package")
    return dest


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def names(root: Path, split: str) -> set[str]:
    return {p.stem for p in (root / split).glob("*.png")}


@pytest.fixture
def source(tmp_path):
    return make_source(tmp_path / "src")


def test_join_captions_and_images(source, tmp_path):
    report = write_emoji(tmp_path / "out", ["google", "twitter"], source=source)
    out = tmp_path / "out"

    def read(split: str, name: str) -> str:
        return (out / split / f"{name}.txt").read_text(encoding="utf-8")

    assert read("train", f"{P1.lower()}-google") == "grinning face, google style"
    assert read("train", f"{P1.lower()}-{SKIN.lower()}-twitter") == (
        "grinning face: light skin tone, twitter style")
    # joined across U+FE0F; lower case; curly quote made ASCII, accents kept
    assert read("train", f"{P2.lower()}-fe0f-twitter") == "flag: côte d'ivoire, twitter style"
    # composited onto the white background, opaque pixels kept, size kept
    pixels = np.asarray(Image.open(out / "train" / f"{P3.lower()}-twitter.png"))
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[0, 0]) == emoji.BACKGROUND
    assert tuple(pixels[32, 32]) == colour(P3, "twitter")
    assert report.written == {"train": {"google": 5, "twitter": 6},
                              "test-zero-shot": {"google": 2, "twitter": 1}}
    assert report.skin_tones == 4 and report.held_out_emoji == 2 and not report.skipped
    assert "14 emoji image-caption pairs" in str(report) and "\n" not in str(report)
    assert len(ImageCaptionFolder(out / "train", 64)) == 11


def test_without_skin_tones(source, tmp_path):
    with_tones = write_emoji(tmp_path / "all", ["google", "twitter"], source=source)
    report = write_emoji(tmp_path / "out", ["google", "twitter"], source=source, skin_tones=False)
    every = names(tmp_path / "all", "train") | names(tmp_path / "all", "test-zero-shot")
    kept = names(tmp_path / "out", "train") | names(tmp_path / "out", "test-zero-shot")
    assert kept == {name for name in every if SKIN.lower() not in name}
    assert report.total == with_tones.total - with_tones.skin_tones and report.skin_tones == 0
    assert not report.skipped  # left out by choice, not skipped as bad data
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skin_tones"] is False and manifest["skin_tone_pairs"] == 0


def test_held_out_rule(source, tmp_path):
    for code in ["1F44B", "1F600", "2764", HG, HT, P1]:
        v = int.from_bytes(hashlib.sha256(code.encode()).digest()[:8], "big")
        expected = emoji.DEFAULT_STYLES[v // 1000 % 2] if v % 1000 < 100 else None
        assert held_out_style(code) == expected == held_out_style(f"{code.lower()}-fe0f")
    fates = [held_out_style(f"{cp:X}") for cp in range(0x1F300, 0x1FB00)]
    assert 0.08 < sum(f is not None for f in fates) / len(fates) < 0.12
    assert abs(fates.count("google") - fates.count("twitter")) < 0.3 * fates.count("google")

    write_emoji(tmp_path / "out", ["google", "twitter"], source=source)
    train, zero_shot = names(tmp_path / "out", "train"), names(tmp_path / "out", "test-zero-shot")
    hg, hgs, ht = HG.lower(), f"{HG}-{SKIN}".lower(), HT.lower()
    assert zero_shot == {f"{hg}-google", f"{hgs}-google", f"{ht}-twitter"}
    assert not zero_shot & train
    assert {f"{hg}-twitter", f"{hgs}-twitter", f"{ht}-google"} <= train


def test_validation_holds_out_the_next_band_into_its_own_split(source, tmp_path, monkeypatch):
    fates = [validation_style(f"{cp:X}") for cp in range(0x1F300, 0x1FB00)]
    assert 0.03 < sum(f is not None for f in fates) / len(fates) < 0.07
    assert not any(held_out_style(f"{cp:X}") and validation_style(f"{cp:X}") for cp in range(0x1F300, 0x1FB00))
    without = write_emoji(tmp_path / "plain", ["google", "twitter"], source=source)
    # the fixture's emoji fall outside the band: let the first plain one fall in it, in twitter
    monkeypatch.setattr(emoji, "validation_style",
                        lambda code, styles: "twitter" if code_point_key(code) == P1 else None)
    report = write_emoji(tmp_path / "out", ["google", "twitter"], source=source, validation=True)
    val = names(tmp_path / "out", "val")
    assert val == {f"{P1.lower()}-twitter", f"{P1}-{SKIN}-twitter".lower()}
    assert f"{P1.lower()}-google" in names(tmp_path / "out", "train") and not val & names(tmp_path / "out", "train")
    assert names(tmp_path / "out", "test-zero-shot") == names(tmp_path / "plain", "test-zero-shot")
    assert report.written["val"] == {"google": 0, "twitter": 2}
    assert VALIDATION_SPLIT not in without.written
    with pytest.raises(DalleError, match="two or more --styles"):
        write_emoji(tmp_path / "one", ["twitter"], source=source, validation=True)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["validation_per_mille"] == 50 and manifest["counts"]["val"]["twitter"] == 2


def test_single_style_has_no_hold_out(source, tmp_path):
    report = write_emoji(tmp_path / "out", "twitter", source=source)
    assert report.written == {"train": {"twitter": 7}, "test-zero-shot": {"twitter": 0}}
    assert all(n.endswith("-twitter") for n in names(tmp_path / "out", "train"))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["held_out_per_mille"] == 0


def test_licences_attribution_and_manifest(source, tmp_path):
    write_emoji(tmp_path / "out", ["google", "twitter"], source=source)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "licenses").iterdir()) == [
        "Apache-2.0.txt", "emoji-datasource-google-LICENSE", "emoji-datasource-twitter-LICENSE",
        "emojibase-data-LICENSE"]
    assert "Apache License" in (out / "licenses" / "Apache-2.0.txt").read_text()
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert "Twemoji graphics by Twitter, Inc and other contributors, licensed under CC-BY 4.0" in (
        attribution)
    assert "Apache License 2.0" in attribution and "MIT" in attribution
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["test-zero-shot"] == {"google": 2, "twitter": 1}
    assert manifest["held_out_pairs"] == 3 and manifest["background"] == [255, 255, 255]
    assert manifest["packages"] == {name: emoji.VERSIONS[name] for name in (
        "emoji-datasource-google", "emoji-datasource-twitter", "emojibase-data")}
    assert manifest["emoji_per_style"] == {"google": 5, "twitter": 5}
    assert manifest["emoji_in_every_style"] == 5


def test_bad_entries_are_skipped_and_counted(source, tmp_path):
    google = source / emoji.IMAGE_PACKAGES["google"]
    twitter = source / emoji.IMAGE_PACKAGES["twitter"]
    (google / "img/google/64" / f"{P3.lower()}.png").unlink()  # missing
    (twitter / "img/twitter/64" / f"{P2.lower()}-fe0f.png").write_bytes(b"\x89PNG broken")
    (google / "img/google/64" / f"{HT.lower()}.png").unlink()  # held-out twin loses its pair
    # the held-out google image of HG is the same picture as a google image in train
    (google / "img/google/64" / f"{HG.lower()}.png").write_bytes(
        (google / "img/google/64" / f"{P1.lower()}.png").read_bytes())
    catalogue = json.loads((google / "emoji.json").read_text())
    catalogue += [{"image": "nounified.png"}, {"unified": "1F9FF", "image": "1f9ff.png",
                                               "has_img_google": True}]
    write_png(google / "img/google/64/1f9ff.png", (1, 2, 3))  # no emojibase label
    (google / "emoji.json").write_text(json.dumps(catalogue))
    catalogue = json.loads((twitter / "emoji.json").read_text())
    catalogue[2]["has_img_twitter"] = False
    (twitter / "emoji.json").write_text(json.dumps(catalogue))

    report = write_emoji(tmp_path / "out", ["google", "twitter"], source=source)
    assert dict(report.skipped) == {
        "missing image": 2, "unreadable image": 1, "no label": 1,
        "malformed emoji.json entry": 1, "not drawn in this style": 1,
        "held out, other style not in train": 1, "held out, same picture in train": 1,
    }
    assert report.written == {"train": {"google": 3, "twitter": 4},
                              "test-zero-shot": {"google": 1, "twitter": 0}}
    assert "skipped 8" in str(report)


def test_deterministic_and_tarballs_match_folders(source, tmp_path):
    write_emoji(tmp_path / "a", ["google", "twitter"], source=source)
    write_emoji(tmp_path / "b", ["twitter", "google"], source=source)
    write_emoji(tmp_path / "c", "google,twitter", source=pack(source, tmp_path / "tgz"))
    for name in emoji.VERSIONS:  # the layout `tar xzf` leaves: <name>/package/
        shutil.copytree(source / name, tmp_path / "untarred" / name / "package")
    write_emoji(tmp_path / "d", ["google", "twitter"], source=tmp_path / "untarred")
    first = tree(tmp_path / "a")
    assert first == tree(tmp_path / "b") == tree(tmp_path / "c") == tree(tmp_path / "d")
    assert len(first) == 2 * 14 + 4 + 2  # pairs, licences, ATTRIBUTION.md + manifest.json


def test_resize(source, tmp_path):
    write_emoji(tmp_path / "out", ["google"], source=source, image_size=32, tags=2)
    out = tmp_path / "out" / "train"
    assert Image.open(out / f"{P1.lower()}-google.png").size == (32, 32)
    # tags that are words of the label ("face", "grinning") are dropped; an emoji with no other
    # tag keeps one line
    assert (out / f"{P1.lower()}-google.txt").read_text() == (
        "grinning face, google style\ngrinning face: grin, google style")
    assert (out / f"{HT.lower()}-google.txt").read_text() == "thumbs up, google style"
    dataset = ImageCaptionFolder(out, 32)
    index = dataset.captions.index("grinning face, google style")
    assert dataset[index]["variants"] == "grinning face, google style\ngrinning face: grin, google style"
    assert "grinning face: grin, google style" in list(read_captions(out))


def test_caption_tags():
    assert caption("Grinning Face", "twitter", ["face", "grin", "grin", "smile", "happy"], 2) == (
        "grinning face, twitter style\ngrinning face: grin, smile, twitter style")
    assert caption("red apple", "fluent-3d", ["apple", "fruit"], 4) == (
        "red apple, fluent 3d style\nred apple: fruit, fluent 3d style")
    assert caption("man’s shoe", "google", ["shoe"], 0) == "man's shoe, google style"
    assert code_point_key("263a-fe0f") == "263A"


def test_unsafe_tarball_members_are_not_written(tmp_path):
    tarball = tmp_path / "evil.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ["package/../escape.png", "/abs/img/google/64/a.png",
                     "package/img/google/64/ok.png"]:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("package/img/google/64/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    emoji._extract(tarball, tmp_path / "target")
    assert [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*")) if p.is_file()] == [
        "evil.tgz", "target/img/google/64/ok.png"]


def test_clear_errors(source, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Apple"):
        write_emoji(tmp_path / "o1", ["apple"], source=source)
    with pytest.raises(ValueError, match="unknown or no emoji style"):
        write_emoji(tmp_path / "o1", ["noto"], source=source)
    (source / emoji.LABEL_PACKAGE / "package.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks the npm package emojibase-data"):
        write_emoji(tmp_path / "o1", ["google"], source=source)
    assert not (tmp_path / "o1").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_emoji(tmp_path / "full", ["google"], source=source)

    monkeypatch.setattr(emoji.shutil, "which", lambda _: None)
    with pytest.raises(DalleError, match="npm is not installed"):
        emoji.fetch_packages(tmp_path / "cache", ["google"])
    monkeypatch.undo()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(
        "#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found - GET x' >&2\n"
        "echo 'npm error A complete log of this run can be found in: /log' >&2\nexit 1\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DalleError, match="npm pack emoji-datasource-google@16.0.0 failed: "
                                           "404 Not Found - GET x$"):
        write_emoji(tmp_path / "o2", ["google"], cache_dir=tmp_path / "cache")


def test_fluent_styles_join_by_code_point_with_their_tones_put_right_and_no_flags(source, tmp_path):
    """LobeHub's file names: unpadded hex, FE0F kept, tones 1F3FC and 1F3FD swapped, flags that are
    not Microsoft's (emoji.py's docstring)."""
    extra = [("1F3FC", "1F3FD"), ("1F3FD", "1F3FC")]  # (file's tone, the tone its art shows)
    labels_path = source / emoji.LABEL_PACKAGE / "en" / "data.json"
    data = json.loads(labels_path.read_text())
    data[0]["skins"] += [{"label": f"grinning face: tone {tone}", "hexcode": f"{P1}-{tone}"}
                         for tone in ("1F3FC", "1F3FD")]
    data += [{"label": "keycap: #", "hexcode": "0023-FE0F-20E3", "tags": []},
             {"label": "flag: United States", "hexcode": "1F1FA-1F1F8", "tags": []}]
    labels_path.write_text(json.dumps(data))
    for style, suffix in emoji.FLUENT_SUFFIXES.items():
        assets = source / emoji.IMAGE_PACKAGES[style] / "assets"
        for tone, shown in extra:
            write_fluent(assets / f"{P1.lower()}-{tone.lower()}{suffix}", colour(f"{P1}-{shown}", style))
        write_fluent(assets / f"23-fe0f-20e3{suffix}", colour("0023-20E3", style))
        write_fluent(assets / f"1f1fa-1f1f8{suffix}", (1, 2, 3))
        write_fluent(assets / f"notes{suffix}", (1, 2, 3))
    (source / emoji.IMAGE_PACKAGES["fluent-flat"] / "assets" / f"{P3.lower()}.svg").write_text("<svg")

    styles = "google,twitter,fluent-flat,fluent-3d"
    report = write_emoji(tmp_path / "out", styles, source=pack(source, tmp_path / "tgz"))
    out = tmp_path / "out"
    both = names(out, "train") | names(out, "test-zero-shot")

    def picture(name: str) -> Image.Image:
        split = "train" if name in names(out, "train") else "test-zero-shot"
        return Image.open(out / split / f"{name}.png")

    for style in emoji.FLUENT_SUFFIXES:
        for tone in ("1F3FC", "1F3FD"):  # the file named for the other tone, its art right here
            image = np.asarray(picture(f"{P1.lower()}-{tone.lower()}-{style}"))
            assert image.shape == (64, 64, 3) and tuple(image[0, 0]) == emoji.BACKGROUND
            assert tuple(image[32, 32]) == colour(f"{P1}-{tone}", style)
        assert f"0023-20e3-{style}" in both
        assert not any(name.startswith("1f1fa") for name in both)
    keycap = next((out / split / "0023-20e3-fluent-3d.txt") for split in emoji.SPLITS
                  if (out / split / "0023-20e3-fluent-3d.txt").exists())
    assert keycap.read_text() == "keycap: #, fluent 3d style"
    assert report.skipped == {"flag not drawn by Microsoft": 2, "malformed file name": 2,
                              "unreadable image": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["emoji_per_style"] == {"google": 5, "twitter": 5, "fluent-flat": 5, "fluent-3d": 6}
    assert manifest["emoji_in_every_style"] == 4  # the broken heart SVG leaves red heart out of flat
    assert "emoji in all 4 styles" in str(report).splitlines()[0]
    # Held out in the style that the rule gives among the four, and seen in another.
    for name in names(out, "test-zero-shot"):
        code, style = next((name[: -len(s) - 1], s) for s in emoji.STYLES if name.endswith(f"-{s}"))
        assert held_out_style(code.split("-")[0], emoji.STYLES) == style
        assert any(f"{code}-{other}" in names(out, "train") for other in emoji.STYLES if other != style)
    assert "Copyright (c) Microsoft Corporation." in (out / "licenses" / "MIT-Fluent-Emoji.txt").read_text()
    assert "Fluent Emoji by Microsoft Corporation, MIT licence" in (out / "ATTRIBUTION.md").read_text()
