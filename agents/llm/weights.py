"""Where a model's weights come from: seeded random values of a named shape, or a local directory.

For latency and memory only shapes and dtype matter, so the default is random weights (seeded, and
labelled "random weights" in every result). A user with real weights points ``path`` at a local
Hugging Face format directory (config.json + *.safetensors, optionally tokenizer.json); nothing is
ever downloaded.

    loaded = load_model(ModelSpec(preset="smollm-135m", dtype="bf16", seed=0))  # fleet.records
    loaded.model, loaded.weights_label, loaded.tokenizer

On a phone (``storage`` given), random weights are installed once into the phone's storage as a
Hugging Face directory (seeded, generated in their dtype, like an app's model file) and every
load reads that directory cold from the disk, as a phone reads its flash, through the same path
as real weights. Installing is timed apart from loading (``install_s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.llm import native
from agents.llm.quant import COMPUTE_DTYPE, QUANT_METHOD, Int8Embedding, quantize_model, retie
from agents.llm.transformer import Transformer, column_major, is_linear_matrix
from agents.storage import IoCount, PhoneStorage
from fleet.records import ModelSpec
from fleet.shapes import ModelArgs, args_from_hf_config, model_args, read_hf_config

RANDOM_WEIGHTS = "random weights"
# a model dtype -> the dtype it computes in (int8 keeps its matrices int8: quant.py)
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "int8": COMPUTE_DTYPE,
}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class LoadedModel:
    model: Transformer
    weights_label: str  # "random weights" or "local weights: <dir>"
    tokenizer: Any = None  # a `tokenizers.Tokenizer` when the directory has tokenizer.json
    read_bytes: int = 0  # bytes read from storage to load it
    install_s: float = 0.0  # writing random weights into the phone's storage, the first time


def load_model(spec: ModelSpec, storage: PhoneStorage | None = None) -> LoadedModel:
    """``int8``: real weights are quantized as they load (a checkpoint saved quantized loads
    as it is); random ones are drawn in bf16 and quantized."""
    quantize = spec.dtype == "int8"
    native.ops()  # the native kernels, built (or loaded) now, not in the first request's time
    if spec.path:
        return _load_local(Path(spec.path), spec.dtype, storage)
    if storage is None:
        model = random_model(model_args(spec), torch_dtype(spec.dtype), spec.seed)
        return LoadedModel(quantize_model(model) if quantize else model, RANDOM_WEIGHTS)
    folder, install_s = install_random_weights(spec, storage)
    loaded = _load_local(folder, spec.dtype, storage)
    loaded.weights_label, loaded.install_s = RANDOM_WEIGHTS, install_s
    return loaded


def install_random_weights(spec: ModelSpec, storage: PhoneStorage) -> tuple[Path, float]:
    """The phone's copy of a preset's seeded random weights, written once; (folder, seconds
    spent writing it now, 0 when it was there)."""
    name = f"{spec.preset}-{spec.dtype}-seed{spec.seed}"
    folder = storage.root / "models" / name
    with storage.locked(name):  # the other processes of this phone wait, then load it
        if (folder / "model.safetensors").is_file():
            return folder, 0.0
        t0 = time.perf_counter()
        tmp = folder.with_name(f".{name}.tmp")
        model = random_model(model_args(spec), torch_dtype(spec.dtype), spec.seed)
        if spec.dtype == "int8":  # stored quantized, as a phone keeps a Q8 model file
            quantize_model(model)
        save_hf_directory(model, tmp)
        with storage.writing(tmp / "model.safetensors") as io:
            io.bytes = (tmp / "model.safetensors").stat().st_size
        os.replace(tmp, folder)
        return folder, time.perf_counter() - t0


RANDOM_POOL = 1_048_573  # a prime: tiled rows never line up with a row length


def random_model(args: ModelArgs, dtype: torch.dtype, seed: int) -> Transformer:
    """Build on the meta device, then materialize once with seeded N(0, 0.02) weights.

    Values are drawn once into a pool of about a million and tiled from a seeded offset per
    parameter: drawing 135M normals costs seconds of CPU a phone never spends (it reads weights
    from storage), while tiling costs a memory copy. Every parameter gets its own memory.
    """
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu").to(dtype)
    if args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    gen = torch.Generator().manual_seed(seed)
    pool = torch.empty(2 * RANDOM_POOL, dtype=dtype)
    pool[:RANDOM_POOL].normal_(0.0, 0.02, generator=gen)
    pool[RANDOM_POOL:] = pool[:RANDOM_POOL]  # any window of RANDOM_POOL values is contiguous
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param.fill_(1.0)
                continue
            flat = param.view(-1)
            offset = int(torch.randint(0, RANDOM_POOL, (1,), generator=gen))
            for start in range(0, flat.numel(), RANDOM_POOL):
                n = min(RANDOM_POOL, flat.numel() - start)
                flat[start : start + n] = pool[offset : offset + n]
    if native.ops() is None:  # the native products read (out, in) rows, as stored
        model.lay_out_matrices()
    return model.eval()


def _load_local(path: Path, dtype_name: str, storage: PhoneStorage | None = None) -> LoadedModel:
    from safetensors import safe_open

    dtype = torch_dtype(dtype_name)
    config = read_hf_config(path)
    args = args_from_hf_config(config)
    quant = (config.get("quantization_config") or {}).get("quant_method", "")
    # (args_from_hf_config refused any other quantization)
    if quant and dtype_name != "int8":
        raise ValueError(f"{path} holds int8 weights; load it with dtype int8")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    reading = storage.reading(*files) if storage else contextlib.nullcontext(IoCount())
    with reading as io:
        for f in files:
            io.bytes += f.stat().st_size
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    name = key.removeprefix("model.")
                    if name.endswith("rotary_emb.inv_freq"):
                        continue  # older checkpoints store the RoPE table; we compute it
                    # a private copy, never the file's mapped pages: an app's model is its own
                    # memory (shared page-cache pages would split its PSS among processes)
                    tensor = st.get_tensor(key)
                    if tensor.dtype == torch.int8:  # a quantized matrix stays int8
                        state[name] = tensor.to(torch.int8, copy=True)
                    elif (
                        dtype == torch.float32
                        and native.ops() is None
                        and is_linear_matrix(name, args.tie_embeddings)
                    ):  # PyTorch's products: the copy, laid out (Transformer.lay_out_matrices)
                        state[name] = column_major(tensor.to(dtype))
                    else:
                        state[name] = tensor.to(dtype, copy=True)
    if args.tie_embeddings:
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    with torch.device("meta"):
        model = Transformer(args)
    if quant:  # the int8 structure, on the meta device, for the saved tensors to fill
        quantize_model(model)
    expected = {
        k for k in model.state_dict() if not (args.tie_embeddings and k.startswith("lm_head."))
    }
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match a {args.n_layer}-layer Llama-family model; "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    if quant and args.tie_embeddings:
        retie(model)
    elif args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    if dtype_name == "int8" and not quant:  # real weights, quantized as they load
        quantize_model(model)
    if native.ops() is None:  # the native products read (out, in) rows, as stored
        model.lay_out_matrices()
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    return LoadedModel(model.eval(), f"local weights: {path}", tokenizer, io.bytes)


def save_hf_directory(model: Transformer, path: Path) -> None:
    """Write ``model`` as a Hugging Face format directory (used by tests and to export shapes)."""
    from safetensors.torch import save_file

    a = model.args
    path.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "model_type": "qwen2" if a.qkv_bias else "llama",
        "num_hidden_layers": a.n_layer,
        "hidden_size": a.dim,
        "num_attention_heads": a.n_head,
        "num_key_value_heads": a.n_kv_head,
        "intermediate_size": a.intermediate_size,
        "vocab_size": a.vocab_size,
        "rope_theta": a.rope_base,
        "rms_norm_eps": a.norm_eps,
        "tie_word_embeddings": a.tie_embeddings,
        "max_position_embeddings": a.max_position,
    }
    tied = a.tie_embeddings and model.tied_head()
    if isinstance(model.embed_tokens, Int8Embedding):
        cfg["quantization_config"] = {"quant_method": QUANT_METHOD, "bits": 8, "group": "row"}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {
        f"model.{k}" if not k.startswith("lm_head") else k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k.startswith("lm_head."))
    }
    save_file(state, str(path / "model.safetensors"))
