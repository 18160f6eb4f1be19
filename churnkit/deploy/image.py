"""Building the serving image and pushing it to a cloud's registry, with plain ``docker`` calls.

``churnkit image build`` builds ``templates/serving/Dockerfile`` for linux/amd64 from a build context
holding only what the image needs (the same files ``.dockerignore`` lets through). With ``--push --target``
it signs in to the target's registry the way each cloud documents it and pushes:

- sagemaker: ECR, ``aws ecr get-login-password --region R | docker login --username AWS --password-stdin HOST``
- azureml: ACR, ``az acr login --name REGISTRY``
- vertex: Artifact Registry, ``gcloud auth configure-docker REGION-docker.pkg.dev``

The image URI comes from ``--image-uri``, else the variable the deploy target reads
(``CHURNKIT_AWS_IMAGE_URI``, ``CHURNKIT_AZURE_IMAGE_URI``, ``CHURNKIT_GCP_IMAGE_URI``), else the
``image_uri`` output of ``templates/terraform/<cloud>``; the URI printed at the end is the value to give
the deploy target. ``plan_image`` returns the exact commands without running any.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from churnkit.exceptions import ConfigError, DeployTargetError
from churnkit.version import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = "templates/serving/Dockerfile"
#: What the build context holds (``.dockerignore`` allows exactly these; a test checks they agree).
CONTEXT = ("pyproject.toml", "README.md", "tools/requirements.py", "churnkit", DOCKERFILE)
CA_BUNDLE_NAME = "ca-bundle.crt"
LOCAL_REPOSITORY = "churnkit-serve"
PLATFORM = "linux/amd64"
TARGETS = {
    "sagemaker": {"cloud": "aws", "env": "CHURNKIT_AWS_IMAGE_URI", "registry": "ECR"},
    "azureml": {"cloud": "azure", "env": "CHURNKIT_AZURE_IMAGE_URI", "registry": "ACR"},
    "vertex": {"cloud": "gcp", "env": "CHURNKIT_GCP_IMAGE_URI", "registry": "Artifact Registry"},
}
_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
_ACR = re.compile(r"^(?P<name>[a-zA-Z0-9]+)\.azurecr\.(io|cn|us)$")
_GAR = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev$")


@dataclass
class Command:
    """One step of a build or push: an argv (or a pipe of two) and what it is for."""

    step: str
    argv: list[str]
    pipe_to: list[str] | None = None  # the second process of `a | b` (ECR's password goes through stdin)
    stdin: str | None = None  # what the process reads on stdin, described (the build context)

    def shell(self) -> str:
        text = shlex.join(self.argv)
        return f"{text} | {shlex.join(self.pipe_to)}" if self.pipe_to else text

    def to_dict(self) -> dict:
        out = {"step": self.step, "shell": self.shell(), "argv": self.argv}
        if self.pipe_to:
            out["pipe_to"] = self.pipe_to
        if self.stdin:
            out["stdin"] = self.stdin
        return out


@dataclass
class ImagePlan:
    """The commands that build (and push) the serving image, and the URI the deploy target reads."""

    local_tag: str
    uri: str
    target: str | None
    source: str  # where the URI came from: option, environment variable, terraform output, local
    commands: list[Command] = field(default_factory=list)
    context_files: list[str] = field(default_factory=list)
    ca_bundle: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {TARGETS[self.target]["env"]: self.uri} if self.target else {}

    def to_dict(self) -> dict:
        return {"image": self.local_tag, "uri": self.uri, "target": self.target, "uri_source": self.source,
                "env": self.env, "platform": PLATFORM, "ca_bundle": self.ca_bundle,
                "context": sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in self.context_files}),
                "commands": [c.to_dict() for c in self.commands]}


# ---- where the image goes -------------------------------------------------------------------------
def terraform_outputs(cloud: str, terraform_dir=None, terraform: str = "terraform") -> dict:
    """``terraform -chdir=DIR output -json`` as {name: value}; {} when there is no state or no terraform."""
    folder = Path(terraform_dir) if terraform_dir else ROOT / "templates" / "terraform" / cloud
    try:
        res = subprocess.run([terraform, f"-chdir={folder}", "output", "-json", "-no-color"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:
        return {}
    try:
        return {name: out.get("value") for name, out in (json.loads(res.stdout or "{}") or {}).items()}
    except (ValueError, AttributeError):
        return {}


def split_uri(uri: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of an image URI such as ``HOST/repo/name:tag``."""
    name, _, tag = uri.rpartition(":") if ":" in uri.rsplit("/", 1)[-1] else (uri, "", "")
    host, _, repo = name.partition("/")
    if not repo or "." not in host:
        raise ConfigError(f"image URI {uri!r} names no registry host; expected HOST/REPOSITORY[:TAG], "
                          "e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnkit-serve:0.1.0")
    return host, repo, tag


def resolve_uri(target: str, image_uri: str | None = None, tag: str | None = None, environ=None,
                terraform_dir=None) -> tuple[str, str]:
    """The image URI to push for ``target`` and where it came from (option > environment > terraform output)."""
    if target not in TARGETS:
        raise DeployTargetError(f"no registry for target {target!r}; available: {', '.join(map(repr, TARGETS))}")
    spec = TARGETS[target]
    env = os.environ if environ is None else environ
    if image_uri:
        uri, source = image_uri, "--image-uri"
    elif env.get(spec["env"]):
        uri, source = env[spec["env"]], spec["env"]
    else:
        outputs = terraform_outputs(spec["cloud"], terraform_dir)
        uri, source = outputs.get("image_uri"), f"terraform -chdir=templates/terraform/{spec['cloud']} output image_uri"
        if not uri:
            raise ConfigError(
                f"no {spec['registry']} image URI for target {target!r}: pass --image-uri, set {spec['env']}, or "
                f"apply templates/terraform/{spec['cloud']} (its output image_uri names the repository)")
    host, repo, old_tag = split_uri(uri)
    return f"{host}/{repo}:{tag or old_tag or __version__}", source


def login_command(uri: str) -> Command:
    """The registry sign-in each cloud documents for the host in ``uri``."""
    host, _, _ = split_uri(uri)
    if m := _ECR.match(host):
        return Command("login", ["aws", "ecr", "get-login-password", "--region", m["region"]],
                       pipe_to=["docker", "login", "--username", "AWS", "--password-stdin", host])
    if m := _ACR.match(host):
        return Command("login", ["az", "acr", "login", "--name", m["name"]])
    if _GAR.match(host):
        return Command("login", ["gcloud", "auth", "configure-docker", host, "--quiet"])
    raise ConfigError(f"registry {host!r} is not ECR (ACCOUNT.dkr.ecr.REGION.amazonaws.com), ACR (NAME.azurecr.io) "
                      "or Artifact Registry (LOCATION-docker.pkg.dev); sign in with `docker login` and push by hand")


# ---- the build context ----------------------------------------------------------------------------
def context_files(root: Path = ROOT) -> list[str]:
    """The repository files the image is built from (what .dockerignore lets through), sorted."""
    files = []
    for entry in CONTEXT:
        path = root / entry
        if path.is_dir():
            files += [p.relative_to(root).as_posix() for p in sorted(path.rglob("*"))
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        elif path.is_file():
            files.append(entry)
        else:
            raise ConfigError(f"{str(path)!r} is missing: `churnkit image build` runs from a churnkit source checkout")
    return files


def default_ca_bundle(environ=None) -> str | None:
    """The CA bundle pip should trust in the build: PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE when set."""
    env = os.environ if environ is None else environ
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if env.get(name) and Path(env[name]).is_file():
            return env[name]
    return None


def context_tar(files: list[str], ca_bundle: str | None = None, root: Path = ROOT) -> bytes:
    """The build context as an uncompressed tar (what `docker build -` reads on stdin)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:  # docker sniffs the first 512 bytes
        for rel in files:
            tar.add(root / rel, arcname=rel, recursive=False)
        if ca_bundle:
            tar.add(ca_bundle, arcname=CA_BUNDLE_NAME, recursive=False)
    return buf.getvalue()


# ---- plan and run ---------------------------------------------------------------------------------
def plan_image(push: bool = False, target: str | None = None, tag: str | None = None, base: str | None = None,
               image_uri: str | None = None, ca_bundle: str | None = None, network: str | None = "host",
               environ=None, terraform_dir=None) -> ImagePlan:
    """The exact commands that build the image (and sign in, tag and push it when ``push``)."""
    if push and not target:
        raise ConfigError("--push needs --target sagemaker, azureml or vertex (whose registry to push to)")
    if image_uri and not target:
        raise ConfigError("--image-uri needs --target (which deploy target reads the image)")
    local = f"{LOCAL_REPOSITORY}:{tag or __version__}"
    if target:
        uri, source = resolve_uri(target, image_uri, tag, environ, terraform_dir)
    else:
        uri, source = local, "local"
    files = context_files()
    ca = ca_bundle if ca_bundle is not None else default_ca_bundle(environ)
    ca = ca or None
    if ca and not Path(ca).is_file():
        raise ConfigError(f"CA bundle {ca!r} does not exist; pass --ca-bundle with a PEM file or --ca-bundle ''")
    build = ["docker", "build", "--platform", PLATFORM]
    if network:
        build += ["--network", network]
    if base:
        build += ["--build-arg", f"BASE={base}"]
    build += ["-f", DOCKERFILE, "-t", local, "-"]
    described = " ".join(sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files}))
    commands = [Command("build", build, stdin=f"build context (tar): {described}" + (f" {CA_BUNDLE_NAME}" if ca else ""))]
    if target and push:
        commands += [login_command(uri), Command("tag", ["docker", "tag", local, uri]), Command("push", ["docker", "push", uri])]
    elif target:
        commands.append(Command("tag", ["docker", "tag", local, uri]))
    return ImagePlan(local_tag=local, uri=uri, target=target, source=source, commands=commands, context_files=files,
                     ca_bundle=ca)


def _run(cmd: Command, stdin: bytes | None, log) -> None:
    log(f"$ {cmd.shell()}")
    try:
        if cmd.pipe_to:
            first = subprocess.run(cmd.argv, capture_output=True)
            if first.returncode != 0:
                raise DeployTargetError(f"`{shlex.join(cmd.argv)}` failed (exit {first.returncode}): "
                                        f"{first.stderr.decode(errors='replace').strip()[-500:]}; sign in to the cloud "
                                        "first (the CI templates do it with OIDC)")
            res = subprocess.run(cmd.pipe_to, input=first.stdout, stdout=sys.stderr, stderr=sys.stderr)
        else:
            res = subprocess.run(cmd.argv, input=stdin, stdout=sys.stderr, stderr=sys.stderr)
    except FileNotFoundError as exc:
        raise DeployTargetError(f"{cmd.step}: command {exc.filename!r} not found; install it (docker, and the cloud's "
                                "CLI for --push: aws, az or gcloud) or run the commands of --plan by hand") from None
    if res.returncode != 0:
        raise DeployTargetError(f"{cmd.step} failed: `{cmd.shell()}` exited {res.returncode} (its output is above); "
                                f"fix that and run churnkit image build again")


def run_plan(plan: ImagePlan, log=None) -> str:
    """Run the plan's commands in order (docker's output on stderr); returns the image URI."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    context = context_tar(plan.context_files, plan.ca_bundle)
    for cmd in plan.commands:
        _run(cmd, context if cmd.step == "build" else None, log)
    return plan.uri


def image_size(ref: str) -> int:
    """Size in bytes of a local image, as ``docker image inspect`` reports it."""
    res = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True)
    if res.returncode != 0:
        raise DeployTargetError(f"image {ref!r} not found locally ({res.stderr.strip()}); build it with churnkit image build")
    return int(res.stdout.strip())
