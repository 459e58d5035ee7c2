"""The Emoji image-caption set: one concept drawn in several art styles (docs/design.md, "Data").

Images come from npm packages, captions from ``emojibase-data`` (17.0.0; ``en/data.json``), joined
on the code point with U+FE0F removed:

* ``google`` and ``twitter``: ``emoji-datasource-google`` and ``emoji-datasource-twitter`` (16.0.0;
  ``img/<style>/64/*.png``, their ``emoji.json`` maps file names to code points). These two are
  the default, the bundled ``emoji`` pipeline's.
* ``fluent-flat`` and ``fluent-3d``: Microsoft's Fluent Emoji (MIT) as LobeHub packages them,
  ``@lobehub/fluent-emoji-flat`` (SVG, rendered with resvg) and ``@lobehub/fluent-emoji-3d``
  (256-px WebP), both 1.1.0, ``assets/<code point>.<svg|webp>``. Their file names are lower-case
  hex, not always padded to four digits; the skin tones U+1F3FC and U+1F3FD are swapped in them
  (each file holds the other's art, checked by brightness on 120 emoji), so the key swaps them
  back. Their country and subdivision flags are left out: Microsoft did not release flags, and
  LobeHub's are one design of its own with no stated licence.

The Apple and Facebook sets are never used (their art is not licensed for this).

* Images: composited onto :data:`BACKGROUND` (white, the background emoji are drawn for) and
  kept at 64x64 or resized (bicubic) to ``image_size``. An image is used only if ``emoji.json``
  says the style draws it (``has_img_<style>``), so no fallback art from another vendor slips in.
* Skin tones are included unless ``skin_tones=False``: each variant is its own pair, captioned with
  emojibase's label for it (``waving hand: light skin tone``) and held out together with its base
  emoji. They are about half of all pairs (five near-copies of each person or hand), so a model
  with few steps to spend sees every other emoji twice as often without them.
* Captions: ``{label}, {style} style`` in lower case, curly quotes made ASCII, e.g.
  ``grinning face, twitter style`` (the Fluent styles as ``fluent flat`` and ``fluent 3d``); the
  style is always named so that it is controllable. With ``tags=n`` the caption file has a second
  line, a variant that training samples as often as the first (``dalle.data.captions``): the
  label, then the first ``n`` emojibase tags (their order, alphabetical) that are not already
  words of the label, then the style: ``grinning face: face, grin, twitter style``. Skin tones
  use their base's tags; an emoji with no such tag keeps one line.
* Splits, when two or more styles are built: ``train`` and ``test-zero-shot``. An emoji is held
  out in one style when the first 8 bytes of SHA-256 of its code point (upper-case hex joined by
  ``-``, no FE0F, no skin tone, e.g. ``1F44B``), read as a big-endian integer ``v``, have
  ``v % 1000 < 100`` (10 % of emoji); the held-out style is ``built[v // 1000 % len(built)]``,
  ``built`` being the styles built in :data:`STYLES` order (for google and twitter,
  ``v // 1000 % 2``). Its images in that style (skin tones included) go to ``test-zero-shot`` and
  never to ``train``; its images in the other styles go to ``train``. A held-out image is skipped
  if no other style of it made it into ``train`` (every zero-shot pair has its emoji seen in
  another style) or if ``train`` holds the same picture in the same style under another code
  point (the packages reuse art for some family emoji and flags). With one style everything is
  ``train``. With ``validation=True`` the next 5% (``100 <= v % 1000 < 150``) are held out the same
  way into ``val``: held-out pairs to validate and early-stop on, so that the pairs
  evaluated in ``test-zero-shot`` choose nothing.
* Each style writes every emoji it draws; ``manifest.json`` counts the emoji (without skin tones)
  of each style and those that all the built styles draw.

Bad data never stops a build: a malformed ``emoji.json`` entry, an image the style does not draw,
a missing or unreadable png, a code point without a label or a duplicate is skipped and counted
by reason. The same inputs give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from dalle.data.folder import IMAGE_TOO_LARGE, IMAGE_UNREADABLE, center_square, load_image, to_rgb
from dalle.errors import DalleError

log = logging.getLogger(__name__)

__all__ = [
    "STYLES",
    "DEFAULT_STYLES",
    "FLUENT_SUFFIXES",
    "SKIN_TONES",
    "SPLITS",
    "IMAGE_PACKAGES",
    "LABEL_PACKAGE",
    "VERSIONS",
    "BACKGROUND",
    "HELD_OUT_PER_MILLE",
    "VALIDATION_PER_MILLE",
    "VALIDATION_SPLIT",
    "EmojiReport",
    "code_point_key",
    "fluent_key",
    "tarball_name",
    "held_out_style",
    "validation_style",
    "caption",
    "fetch_packages",
    "write_emoji",
]

STYLES: tuple[str, ...] = ("google", "twitter", "fluent-flat", "fluent-3d")
DEFAULT_STYLES: tuple[str, ...] = ("google", "twitter")
SPLITS: tuple[str, ...] = ("train", "test-zero-shot")
VALIDATION_SPLIT = "val"  # written only with validation=True; the name `dalle recipe folder` reads
IMAGE_PACKAGES: dict[str, str] = {
    "google": "emoji-datasource-google",
    "twitter": "emoji-datasource-twitter",
    "fluent-flat": "@lobehub/fluent-emoji-flat",
    "fluent-3d": "@lobehub/fluent-emoji-3d",
}
FLUENT_SUFFIXES: dict[str, str] = {"fluent-flat": ".svg", "fluent-3d": ".webp"}  # in assets/
LABEL_PACKAGE = "emojibase-data"
VERSIONS: dict[str, str] = {
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "@lobehub/fluent-emoji-flat": "1.1.0",
    "@lobehub/fluent-emoji-3d": "1.1.0",
    LABEL_PACKAGE: "17.0.0",
}
APACHE_LICENSE = Path(__file__).parent / "licenses" / "Apache-2.0.txt"
FLUENT_LICENSE = Path(__file__).parent / "licenses" / "MIT-Fluent-Emoji.txt"  # the packages ship none
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
HELD_OUT_PER_MILLE = 100
VALIDATION_PER_MILLE = 50  # with validation=True: held out into val
NATIVE_SIZE = 64

_ART = {
    "google": "Noto Emoji art by Google Inc., licensed under the Apache License 2.0, "
    "https://www.apache.org/licenses/LICENSE-2.0 (https://github.com/googlefonts/noto-emoji)",
    "twitter": "Twemoji graphics by Twitter, Inc and other contributors, licensed under CC-BY 4.0, "
    "https://creativecommons.org/licenses/by/4.0/ (https://github.com/jdecked/twemoji)",
    **{style: "Fluent Emoji by Microsoft Corporation, MIT licence "
       "(https://github.com/microsoft/fluentui-emoji)" for style in FLUENT_SUFFIXES},
}
_STYLE_WORDS = {"fluent-flat": "fluent flat", "fluent-3d": "fluent 3d"}  # as captions name them
SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
_LOBEHUB_TONES = {"1F3FC": "1F3FD", "1F3FD": "1F3FC"}  # each file holds the other's art
_FLUENT_NAME = re.compile(r"[0-9a-f]+([-_][0-9a-f]+)*")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_IMAGE_NAME = re.compile(r"[0-9a-f]+(-[0-9a-f]+)*\.png")


@dataclass
class EmojiReport:
    """What a build wrote: pairs per split and style, held-out emoji, and skips by reason."""

    out_dir: Path
    written: dict[str, dict[str, int]]
    held_out_emoji: int = 0
    skin_tones: int = 0
    skipped: Counter = field(default_factory=Counter)
    emoji_per_style: dict[str, int] = field(default_factory=dict)  # without skin tones
    emoji_in_every_style: int = 0

    @property
    def total(self) -> int:
        return sum(n for per_style in self.written.values() for n in per_style.values())

    def __str__(self) -> str:
        splits = "; ".join(
            f"{split} " + ", ".join(f"{n} {style}" for style, n in per_style.items())
            for split, per_style in self.written.items()
        )
        line = (f"{self.total} emoji image-caption pairs in {self.out_dir} ({splits}; "
                f"{self.held_out_emoji} emoji held out in one style)")
        if len(self.emoji_per_style) > 2:
            line += (f"; {self.emoji_in_every_style} emoji in all {len(self.emoji_per_style)} "
                     "styles")
        if not self.skipped:
            return line
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"{line}\nskipped {sum(self.skipped.values())} ({reasons})"


@dataclass(frozen=True)
class _Entry:
    key: str  # code point, e.g. "1F44B-1F3FB"
    base: str  # code point without skin tone: the unit that is held out
    image: str  # file name in the style's image folder
    drawn: bool  # has_img_<style> (the Fluent packages hold only what they draw)
    name: str  # the written files' name, before "-<style>"


def code_point_key(hexcode: str) -> str:
    """The join key: upper-case hex code points joined by ``-``, with U+FE0F removed."""
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


def fluent_key(stem: str) -> str:
    """The join key of a LobeHub file name (``1f44b-1f3fc``, ``23-fe0f-20e3``): each code point
    padded to four digits, and the two swapped skin tones put right."""
    parts = [part.upper().zfill(4) for part in stem.replace("_", "-").split("-")]
    return code_point_key("-".join(_LOBEHUB_TONES.get(part, part) for part in parts))


def _is_flag(key: str) -> bool:
    """A country flag (two regional indicators) or a subdivision flag (black flag and tags)."""
    parts = key.split("-")
    regional = len(parts) == 2 and all("1F1E6" <= part <= "1F1FF" for part in parts)
    return regional or (parts[0] == "1F3F4" and len(parts) > 1 and parts[1].startswith("E00"))


def _split_hash(code_point: str) -> int:
    """``v`` of the module docstring: the first 8 bytes of SHA-256 of the code point, big-endian."""
    return int.from_bytes(hashlib.sha256(code_point_key(code_point).encode("ascii")).digest()[:8], "big")


def held_out_style(code_point: str, styles: Sequence[str] = DEFAULT_STYLES) -> str | None:
    """The style of ``styles`` (those built, in :data:`STYLES` order) whose image of this emoji is
    held out of training, or None (module docstring)."""
    value = _split_hash(code_point)
    if value % 1000 >= HELD_OUT_PER_MILLE:
        return None
    return styles[value // 1000 % len(styles)]


def validation_style(code_point: str, styles: Sequence[str] = DEFAULT_STYLES) -> str | None:
    """The style whose image of this emoji goes to ``val`` in a build with validation,
    or None (module docstring)."""
    value = _split_hash(code_point)
    if not HELD_OUT_PER_MILLE <= value % 1000 < HELD_OUT_PER_MILLE + VALIDATION_PER_MILLE:
        return None
    return styles[value // 1000 % len(styles)]


def caption(label: str, style: str, tags: Sequence[str] = (), n_tags: int = 0) -> str:
    """``{label}, {style} style``, and with ``n_tags`` a second line naming the first ``n_tags``
    tags that are not already words of the label: ``{label}: {tags}, {style} style``."""
    text = label.translate(_QUOTES).lower().strip()
    words = set(re.findall(r"[\w']+", text))
    extra = [t.translate(_QUOTES).lower().strip() for t in tags]
    extra = list(dict.fromkeys(t for t in extra if t and t not in words))[:n_tags]
    style_words = f"{_STYLE_WORDS.get(style, style)} style"
    plain = f"{text}, {style_words}"
    return f"{plain}\n{text}: {', '.join(extra)}, {style_words}" if extra else plain


def _file_stem(name: str) -> str:
    """A package name as npm writes it in file names: a scope's ``@`` dropped, ``/`` as ``-``."""
    return name.lstrip("@").replace("/", "-")


def tarball_name(name: str) -> str:
    """The file ``npm pack`` writes for a pinned package."""
    return f"{_file_stem(name)}-{VERSIONS[name]}.tgz"


def fetch_packages(cache_dir: str | os.PathLike[str], styles: Sequence[str] = DEFAULT_STYLES) -> Path:
    """Download the pinned package tarballs with ``npm pack`` into ``cache_dir``; returns it.

    Tarballs already there are reused, so a second build is offline.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for name in [IMAGE_PACKAGES[s] for s in styles] + [LABEL_PACKAGE]:
        spec, tarball = f"{name}@{VERSIONS[name]}", cache / tarball_name(name)
        if tarball.is_file():
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise DalleError("npm is not installed: install Node.js, or pass a local folder "
                               "holding the emoji packages")
        try:
            done = subprocess.run([npm, "pack", spec], cwd=cache, capture_output=True, text=True,
                                  timeout=600)
        except subprocess.TimeoutExpired as e:
            raise DalleError(f"npm pack {spec} took more than {e.timeout:.0f} s") from e
        if done.returncode != 0 or not tarball.is_file():
            raise DalleError(f"npm pack {spec} failed: {_npm_error(done.stderr + done.stdout)}")
    return cache


def _npm_error(output: str) -> str:
    """The telling line of npm's error output, which opens with code/errno lines and ends with
    the path of a log file."""
    lines = [m.group(1).strip() for m in re.finditer(r"^npm (?:error|ERR!)(.*)$", output, re.M)]
    details = [line for line in lines
               if line and line.split()[0] not in ("code", "errno", "syscall")]
    return details[0] if details else (output.strip().splitlines() or ["no output"])[-1]


def _needed(path: str) -> bool:
    """Whether a package file (path inside the package) is read by a build."""
    return (path in ("package.json", "emoji.json", "en/data.json") or path.startswith("LICENSE")
            or re.fullmatch(r"img/[a-z]+/64/[^/]+\.png|assets/[^/]+\.(svg|webp)", path) is not None)


def _extract(tarball: Path, target: Path) -> Path:
    """Unpack the files a build reads from an npm tarball into ``target``.

    npm keeps a package under one top folder (``package/``), which is dropped. Only regular
    files are written and only under ``target``: links and absolute or ``..`` paths are ignored.
    """
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                parts = path.parts[1:]
                if (not member.isfile() or path.is_absolute() or ".." in path.parts
                        or not parts or not _needed("/".join(parts))):
                    continue
                dest = target.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src:  # type: ignore[union-attr]  # a file: not None
                    dest.write_bytes(src.read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DalleError(f"cannot unpack npm tarball {tarball}: {e}") from e
    return target


def _package_root(source: Path, name: str, scratch: Path) -> Path:
    """The folder holding package ``name``: unpacked in ``source``, or unpacked from its tarball."""
    for root in (source / name, source / name / "package"):
        if (root / "package.json").is_file():
            return root
    tarball = source / tarball_name(name)
    if tarball.is_file():
        return _extract(tarball, scratch / name)
    raise FileNotFoundError(f"emoji source {source} lacks the npm package {name}: expected "
                            f"a folder {name}/ with package.json or the tarball {tarball.name}")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DalleError(f"{path} is not valid JSON: {e}") from None


def _version(root: Path, name: str) -> str:
    meta = _read_json(root / "package.json")
    version = str(meta.get("version", "unknown")) if isinstance(meta, dict) else "unknown"
    if version != VERSIONS[name]:
        log.warning("%s is version %s; this builder expects %s", name, version, VERSIONS[name])
    return version


def _labels(data: object) -> dict[str, tuple[str, tuple[str, ...]]]:
    """emojibase ``en/data.json`` -> {code point key: (label, tags)}, skin tones included."""
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    for entry in data if isinstance(data, list) else ():
        if not isinstance(entry, dict):
            continue
        tags = tuple(t for t in entry.get("tags") or () if isinstance(t, str))
        skins = entry.get("skins")
        for item in [entry, *(skins if isinstance(skins, list) else ())]:
            if not isinstance(item, dict):
                continue
            label, hexcode = item.get("label"), item.get("hexcode")
            if isinstance(label, str) and label.strip() and isinstance(hexcode, str):
                labels[code_point_key(hexcode)] = (label, tags)
    return labels


def _entries(data: object, style: str, skin_tones: bool) -> tuple[list[_Entry], int]:
    """emoji-datasource ``emoji.json`` -> image entries (skin tones too if ``skin_tones``),
    malformed count."""
    entries, malformed = [], 0
    flag = f"has_img_{style}"
    for item in data if isinstance(data, list) else ():
        try:
            base = code_point_key(item["unified"])
            variations = (item.get("skin_variations") or {}) if skin_tones else {}
            found = [(base, item["image"], item.get(flag) is True)]
            found += [(code_point_key(v["unified"]), v["image"], v.get(flag) is True)
                      for v in variations.values()]
        except (KeyError, TypeError, AttributeError):
            malformed += 1
            continue
        for key, image, drawn in found:
            if isinstance(image, str) and _IMAGE_NAME.fullmatch(image):
                entries.append(_Entry(key, base, image, drawn, image[:-4]))
            else:
                malformed += 1
    return entries, malformed


def _fluent_entries(assets: Path, suffix: str, skin_tones: bool) -> tuple[list[_Entry], Counter]:
    """A LobeHub package's ``assets/`` -> image entries (skin tones too if ``skin_tones``), and the
    files left out by reason."""
    entries: list[_Entry] = []
    skipped: Counter[str] = Counter()
    for path in sorted(assets.glob(f"*{suffix}")):
        stem = path.name[: -len(suffix)]
        if not _FLUENT_NAME.fullmatch(stem):
            skipped["malformed file name"] += 1
            continue
        key = fluent_key(stem)
        base = "-".join(part for part in key.split("-") if part not in SKIN_TONES)
        if _is_flag(base):
            skipped["flag not drawn by Microsoft"] += 1
        elif skin_tones or key == base:
            entries.append(_Entry(key, base, path.name, True, key.lower()))
    return entries, skipped


def _load_art(path: Path, image_size: int) -> Image.Image:
    """A style's picture of an emoji on :data:`BACKGROUND` at ``image_size``: an SVG is rendered
    at that size (resvg), a bitmap resized (``center_square``)."""
    if path.suffix == ".svg":
        import resvg_py  # a broken SVG raises ValueError, as an unreadable bitmap does

        png = resvg_py.svg_to_bytes(svg_path=str(path), width=image_size, height=image_size)
        art: Image.Image = Image.open(io.BytesIO(bytes(png)))
    else:
        art = load_image(path)
    return center_square(to_rgb(art, BACKGROUND), image_size)


def _check_styles(styles: Sequence[str]) -> tuple[str, ...]:
    """Validated styles in :data:`STYLES` order; a string is read as a comma-separated list."""
    chosen = [s.strip().lower() for s in (styles.split(",") if isinstance(styles, str) else styles)]
    for vendor in ("apple", "facebook"):
        if vendor in chosen:
            raise DalleError(f"the {vendor.capitalize()} emoji set is not licensed for this; "
                             f"choose from {', '.join(STYLES)}")
    unknown = [s for s in chosen if s not in STYLES]
    if unknown or not chosen:
        raise DalleError(f"unknown or no emoji style in {','.join(chosen)!r}; "
                         f"choose from {', '.join(STYLES)}")
    return tuple(s for s in STYLES if s in chosen)


def _attribution(styles: Sequence[str], versions: dict[str, str], image_size: int) -> str:
    """ATTRIBUTION.md: the art's licences and credit, and the changes made (CC-BY asks for both)."""
    resized = "" if image_size == NATIVE_SIZE else f" and resized to {image_size}x{image_size}"
    lines = [
        "# Emoji image-caption set: sources and licences",
        "",
        f"Built by dalle from npm packages. Changes: each image was composited onto an opaque "
        f"RGB {BACKGROUND} background{resized}; captions were derived from emojibase labels.",
        "",
    ]
    for style in styles:
        name = IMAGE_PACKAGES[style]
        if style in FLUENT_SUFFIXES:
            lines.append(f"- {style} style images: {_ART[style]}. Taken from {name} "
                         f"{versions[name]} (packaged by LobeHub, MIT licence); the packages' "
                         "flags, not Microsoft's, were left out.")
        else:
            lines.append(f"- {style} style images: {_ART[style]}. Taken from {name} "
                         f"{versions[name]}, whose emoji.json index is by Cal Henderson, MIT "
                         "licence.")
    lines += [f"- Captions: emojibase-data {versions[LABEL_PACKAGE]} by Miles Johnson, "
              "MIT licence.", "", "The packages' own LICENSE files and the Apache-2.0 text are copied "
              "into licenses/."]
    return "\n".join(lines) + "\n"


def _check_output(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"emoji output folder {root} exists and is not empty; "
                              "choose a new folder or remove it")


def _save(folder: Path, name: str, image: Image.Image, text: str) -> None:
    image.save(folder / f"{name}.png", format="PNG")
    (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def _digest(image: Image.Image) -> bytes:
    return hashlib.sha256(image.tobytes()).digest()


def _build(root: Path, styles: Sequence[str], image_dirs: dict[str, Path],
           catalogues: dict[str, object], labels: dict[str, tuple[str, tuple[str, ...]]],
           image_size: int, n_tags: int, skin_tones: bool, validation: bool) -> EmojiReport:
    """Join, caption, split and write every image; held-out images wait for their counterparts."""
    splits = (*SPLITS, VALIDATION_SPLIT) if validation else SPLITS
    report = EmojiReport(root, {split: {style: 0 for style in styles} for split in splits})
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
    trained: set[tuple[str, str]] = set()  # (style, code point)
    trained_pixels: set[tuple[str, bytes]] = set()  # (style, digest of the written image)
    held: list[tuple[str, str, _Entry, str, Image.Image, str]] = []  # split first
    drawn: dict[str, set[str]] = {style: set() for style in styles}  # emoji written, by style
    for style in styles:
        if style in FLUENT_SUFFIXES:
            entries, left_out = _fluent_entries(image_dirs[style], FLUENT_SUFFIXES[style], skin_tones)
            report.skipped.update(left_out)
        else:
            entries, malformed = _entries(catalogues[style], style, skin_tones)
            if malformed:
                report.skipped["malformed emoji.json entry"] += malformed
        seen: set[str] = set()
        for entry in sorted(entries, key=lambda e: (e.image, e.key)):
            path = image_dirs[style] / entry.image
            if entry.key in seen:
                report.skipped["duplicate code point"] += 1
                continue
            seen.add(entry.key)
            if not entry.drawn:
                report.skipped["not drawn in this style"] += 1
                continue
            if entry.key not in labels:
                report.skipped["no label"] += 1
                continue
            if not path.is_file():
                report.skipped["missing image"] += 1
                continue
            try:
                image = _load_art(path, image_size)
            except IMAGE_TOO_LARGE + IMAGE_UNREADABLE:
                report.skipped["unreadable image"] += 1
                continue
            label, label_tags = labels[entry.key]
            text, name = caption(label, style, label_tags, n_tags), f"{entry.name}-{style}"
            if len(styles) > 1 and held_out_style(entry.base, styles) == style:
                held.append(("test-zero-shot", style, entry, name, image, text))
                continue
            if VALIDATION_SPLIT in splits and validation_style(entry.base, styles) == style:
                held.append((VALIDATION_SPLIT, style, entry, name, image, text))
                continue
            _save(root / "train", name, image, text)
            trained.add((style, entry.key))
            trained_pixels.add((style, _digest(image)))
            drawn[style].add(entry.base)
            report.written["train"][style] += 1
            report.skin_tones += int(entry.key != entry.base)
    held_emoji: set[str] = set()
    for split, style, entry, name, image, text in held:
        if not any((other, entry.key) in trained for other in styles if other != style):
            report.skipped["held out, other style not in train"] += 1
            continue
        if (style, _digest(image)) in trained_pixels:
            report.skipped["held out, same picture in train"] += 1
            continue
        _save(root / split, name, image, text)
        held_emoji.add(entry.base)
        drawn[style].add(entry.base)
        report.written[split][style] += 1
        report.skin_tones += int(entry.key != entry.base)
    report.held_out_emoji = len(held_emoji)
    report.emoji_per_style = {style: len(drawn[style]) for style in styles}
    report.emoji_in_every_style = len(set.intersection(*drawn.values()))
    return report


def write_emoji(
    out_dir: str | os.PathLike[str],
    styles: Sequence[str] = DEFAULT_STYLES,
    source: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    tags: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    skin_tones: bool = True,
    validation: bool = False,
) -> EmojiReport:
    """Build the Emoji set into ``out_dir`` (which must be new or empty); see the module docstring.

    Writes ``<out_dir>/<split>/<image name>-<style>.png`` (e.g. ``1f44b-1f3fb-twitter.png``) with
    a same-named ``.txt`` caption (UTF-8, no trailing newline), the packages' LICENSE files as
    ``licenses/<package>-LICENSE``, ``ATTRIBUTION.md`` and ``manifest.json`` (versions, background,
    counts per split and style, skips). ``source`` is a local folder holding, for each package,
    either the unpacked package as ``<name>/`` (``package.json`` inside it or in its ``package/``
    subfolder; a ``node_modules`` folder works) or the tarball ``npm pack`` writes,
    ``<name>-<version>.tgz`` (:func:`tarball_name`). Without it the tarballs are fetched with ``npm pack`` into
    ``cache_dir`` (reused when present) or a temporary folder. ``styles`` may be a list or a
    comma-separated string; ``tags`` is the number of emojibase tags in each caption's variant;
    ``skin_tones=False`` leaves out the skin-tone variants (each emoji keeps its base image);
    ``validation=True`` also writes ``val``, held-out pairs to validate on.
    """
    chosen = _check_styles(styles)
    if not isinstance(image_size, int) or image_size < 1:
        raise DalleError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(tags, int) or tags < 0:
        raise DalleError(f"tags must be a non-negative integer, got {tags!r}")
    if validation and len(chosen) < 2:
        raise DalleError("--validation holds out pairs in one style while the others stay in "
                         "train: give two or more --styles")
    if source is not None and cache_dir is not None:
        raise DalleError("pass either a local emoji source folder or a cache folder, not both")
    if source is not None and not Path(source).is_dir():
        raise FileNotFoundError(f"emoji source folder {source} does not exist")
    root = Path(out_dir)
    _check_output(root)
    names = [IMAGE_PACKAGES[s] for s in chosen] + [LABEL_PACKAGE]
    with tempfile.TemporaryDirectory(prefix="dalle-emoji-") as scratch:
        if source is None:
            source = fetch_packages(cache_dir or Path(scratch) / "npm", chosen)
        roots = {name: _package_root(Path(source), name, Path(scratch) / "unpacked")
                 for name in names}
        versions = {name: _version(roots[name], name) for name in names}
        labels = _labels(_read_json(roots[LABEL_PACKAGE] / "en" / "data.json"))
        catalogues = {s: _read_json(roots[IMAGE_PACKAGES[s]] / "emoji.json") for s in chosen
                      if s not in FLUENT_SUFFIXES}
        image_dirs = {s: roots[IMAGE_PACKAGES[s]] / ("assets" if s in FLUENT_SUFFIXES else f"img/{s}/64")
                      for s in chosen}
        report = _build(root, chosen, image_dirs, catalogues, labels, image_size, tags,
                        skin_tones, validation)
        (root / "licenses").mkdir()
        for name in names:
            for licence in sorted(roots[name].glob("LICENSE*")):
                shutil.copyfile(licence, root / "licenses" / f"{_file_stem(name)}-{licence.name}")
        if "google" in chosen:  # Apache-2.0 §4(a): recipients get a copy of the licence
            shutil.copyfile(APACHE_LICENSE, root / "licenses" / "Apache-2.0.txt")
        if set(chosen) & set(FLUENT_SUFFIXES):  # MIT: the notice goes with every copy
            shutil.copyfile(FLUENT_LICENSE, root / "licenses" / FLUENT_LICENSE.name)
    (root / "ATTRIBUTION.md").write_text(_attribution(chosen, versions, image_size),
                                         encoding="utf-8")
    manifest = {
        "dataset": "emoji",
        "styles": list(chosen),
        "packages": versions,
        "image_size": image_size,
        "background": list(BACKGROUND),
        "caption_tags": tags,
        "skin_tones": skin_tones,
        "held_out_per_mille": HELD_OUT_PER_MILLE if len(chosen) > 1 else 0,
        "validation_per_mille": VALIDATION_PER_MILLE if VALIDATION_SPLIT in report.written else 0,
        "counts": report.written,
        "held_out_pairs": sum(report.written["test-zero-shot"].values()),
        "held_out_emoji": report.held_out_emoji,
        "skin_tone_pairs": report.skin_tones,
        "emoji_per_style": report.emoji_per_style,
        "emoji_in_every_style": report.emoji_in_every_style,
        "skipped": dict(sorted(report.skipped.items())),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    if report.skipped:
        log.warning("%s", report)
    return report
