"""The installed names: everything under `fl_userdp`, so a user's app with its own `server.py` and
`clients.py` keeps its names while it uses the drop-in strategy and the library's apps."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_covers_every_folder_and_installs_under_fl_userdp():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool["package-dir"]
    assert mapping == {"fl_userdp.server": "server", "fl_userdp.clients": "clients"}
    folders = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("fl_userdp", "server", "clients"):
            name = ".".join(rel.parts)
            folders.add(name if rel.parts[0] == "fl_userdp" else f"fl_userdp.{name}")
    assert set(tool["packages"]) == folders
    assert all(p == "fl_userdp" or p.startswith("fl_userdp.") for p in tool["packages"])


def test_the_wheel_holds_no_top_level_server_or_clients(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(next(tmp_path.glob("fl_userdp-*.whl"))).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"fl_userdp"}, top
    assert "fl_userdp/server/dropin.py" in names and "fl_userdp/clients/app.py" in names


USER_APP = {
    "server.py": "NAME = 'the app server'\n",
    "clients.py": "NAME = 'the app clients'\n",
    "main.py": (
        "import server, clients\n"
        "from fl_userdp.server.dropin import UserDPFedAvg\n"
        "from fl_userdp.server.app import app as server_app\n"
        "from fl_userdp.clients.app import app as client_app\n"
        "s = UserDPFedAvg(sampling_rate=0.5, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)\n"
        "print(server.NAME, '|', clients.NAME, '|', type(s).__name__, type(server_app).__name__,"
        " type(client_app).__name__)\n"),
}


def test_an_app_with_its_own_server_and_clients_modules_uses_the_library(tmp_path):
    for name, text in USER_APP.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "the app server | the app clients | UserDPFedAvg ServerApp ClientApp"


def test_a_source_tree_copy_imports_its_own_server_and_clients(tmp_path):
    """A copy of the source tree that is not installed (mutation testing's mutants/): its `fl_userdp.server`
    and `fl_userdp.clients` are the copy's server/ and clients/, not the installed ones."""
    import shutil
    import sysconfig

    for name in ("fl_userdp", "server", "clients"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    site = sysconfig.get_paths()["purelib"]   # numpy & co., without the site's .pth files (-S)
    code = ("import fl_userdp.server.strategy as s, fl_userdp.clients.compute as c; print(s.__file__); "
            "print(c.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{site}", "PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr[-2000:]
    files = out.stdout.split()
    assert files == [str(tmp_path / "server" / "strategy.py"), str(tmp_path / "clients" / "compute.py")]


def test_the_flower_range_is_tested_at_both_ends():
    """pyproject.toml's Flower range: its lower end is the version .ci/run installs after the suite to run the
    drop-in's tests again, its upper end lies just above the version the suite runs with (constraints.txt)."""
    import re

    from packaging.version import Version

    (flwr,) = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
               if d.startswith("flwr")]
    lower, upper = (Version(re.search(rf"{op}\s*([\d.]+)", flwr).group(1)) for op in (">=", "<"))
    assert lower < Version("1.42"), flwr   # a range, not one version
    ci = re.search(r'pip install -q "flwr\[simulation\]==([\d.]+)"', (ROOT / ".ci" / "run").read_text())
    assert ci and Version(ci.group(1)) == lower, "the lower end is not what CI tests"
    pinned = Version(re.search(r"^flwr==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1))
    assert lower < pinned < upper and upper.release[:2] == (pinned.major, pinned.minor + 1)
