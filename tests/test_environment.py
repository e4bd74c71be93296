"""environment.yml (conda) and pyproject.toml (pip) must list the same dependencies with the same pins."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req.strip())
    assert m, req
    return m.group(1).lower().replace("_", "-"), m.group(3).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip_section = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section.update(_split(r) for r in dep["pip"] if not r.startswith("-"))
        else:
            name, spec = _split(dep.replace("=", "==", 1) if re.match(r"^[\w\-]+=[^=]", dep) else dep)
            conda[name] = spec
    for name, spec in pip_reqs.items():
        cname = CONDA_NAMES.get(name, name)
        found = conda.get(cname, pip_section.get(name))
        assert found is not None, f"{name} is in pyproject.toml but not in environment.yml"
        assert found == spec, f"{name}: pyproject pins {spec!r}, environment.yml {found!r}"
    listed = set(conda) | set(pip_section)
    extra = listed - {CONDA_NAMES.get(n, n) for n in pip_reqs} - set(pip_reqs) - {"python", "pip"}
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {sorted(extra)}"
