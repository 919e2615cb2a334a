"""Model shapes: the Llama-family dimensions of every preset, read without torch.

Both sides size models from here: the coordinator refuses an experiment that cannot fit before
anything starts, the phone refuses a deployment before loading it, and the torch engine
(``agents/llm``) builds its modules from the same ``ModelArgs``. A local Hugging Face directory's
shape comes from its ``config.json``; nothing is downloaded.

    args = ModelArgs.from_name("smollm-135m")
    args.weight_bytes("bf16"), args.kv_cache_bytes(1024, "bf16")
    args = model_args(ModelSpec(path="/data/SmolLM-135M"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.records import ModelSpec

# bytes per weight of each model dtype; int8 also keeps a bf16 scale per matrix row and computes
# (norms, biases, KV cache) in bf16: ModelArgs.weight_bytes and kv_dtype
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "int8": 1}


INT8_QUANT_METHOD = "slm-fleet-int8"  # config.json's quantization_config of an int8 directory


def kv_dtype(dtype: str) -> str:
    """The dtype of a model's KV cache and activations."""
    return "bf16" if dtype == "int8" else dtype


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class ModelArgs:
    name: str = "custom"
    n_layer: int = 2  # decoder blocks
    dim: int = 64  # hidden size
    n_head: int = 4  # query heads
    n_kv_head: int = 2  # key/value heads (grouped-query attention when < n_head)
    intermediate_size: int = 128  # SwiGLU hidden size
    vocab_size: int = 256
    rope_base: float = 10000.0  # RoPE theta
    rope_type: str = "default"  # RoPE scaling: default (none), linear or llama3
    rope_factor: float = 1.0  # linear and llama3: how much the context was stretched
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_position: int = 8192  # llama3: the context before stretching
    norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2 puts a bias on q/k/v projections
    tie_embeddings: bool = True  # lm_head shares the input embedding matrix
    max_position: int = 2048  # longest context the model was built for

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @classmethod
    def from_name(cls, name: str) -> ModelArgs:
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[key]

    def num_params(self) -> int:
        """Parameter count (a tied lm_head is counted once)."""
        kv = self.n_kv_head * self.head_dim
        attn = self.dim * self.dim * 2 + self.dim * kv * 2  # q, o, k, v
        if self.qkv_bias:
            attn += self.dim + 2 * kv
        mlp = 3 * self.dim * self.intermediate_size
        block = attn + mlp + 2 * self.dim  # two RMSNorm weights
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.n_layer * block + embed + head + self.dim

    def matrix_rows(self) -> int:
        """Output rows of every weight matrix (a tied lm_head is the embedding)."""
        kv = self.n_kv_head * self.head_dim
        block = 2 * self.dim + 2 * kv + 2 * self.intermediate_size + self.dim
        return self.n_layer * block + self.vocab_size * (1 if self.tie_embeddings else 2)

    def vector_params(self) -> int:
        """Parameters outside the matrices: RMSNorm weights and q/k/v biases."""
        biases = self.dim + 2 * self.n_kv_head * self.head_dim if self.qkv_bias else 0
        return self.n_layer * (2 * self.dim + biases) + self.dim

    def weight_bytes(self, dtype: str) -> int:
        if dtype == "int8":  # int8 matrices, a bf16 scale per row, bf16 norms and biases
            matrices = self.num_params() - self.vector_params()
            return matrices + 2 * (self.matrix_rows() + self.vector_params())
        return self.num_params() * dtype_bytes(dtype)

    def kv_cache_bytes(self, max_seq_len: int, dtype: str, batch: int = 1) -> int:
        """Bytes of a preallocated KV cache: K and V for every layer, kv head and position."""
        per_pos = 2 * self.n_layer * self.n_kv_head * self.head_dim * dtype_bytes(kv_dtype(dtype))
        return batch * max_seq_len * per_pos


PRESETS: dict[str, ModelArgs] = {
    "tiny": ModelArgs(
        name="tiny",
        n_layer=2,
        dim=64,
        n_head=4,
        n_kv_head=2,
        intermediate_size=128,
        vocab_size=256,
        qkv_bias=True,
        max_position=512,
    ),
    "smollm-135m": ModelArgs(
        name="smollm-135m",
        n_layer=30,
        dim=576,
        n_head=9,
        n_kv_head=3,
        intermediate_size=1536,
        vocab_size=49152,
        max_position=2048,
    ),
    "smollm-360m": ModelArgs(
        name="smollm-360m",
        n_layer=32,
        dim=960,
        n_head=15,
        n_kv_head=5,
        intermediate_size=2560,
        vocab_size=49152,
        max_position=2048,
    ),
    "qwen2.5-0.5b": ModelArgs(
        name="qwen2.5-0.5b",
        n_layer=24,
        dim=896,
        n_head=14,
        n_kv_head=2,
        intermediate_size=4864,
        vocab_size=151936,
        rope_base=1_000_000.0,
        norm_eps=1e-6,
        qkv_bias=True,
        max_position=32768,
    ),
    "tinyllama-1.1b": ModelArgs(
        name="tinyllama-1.1b",
        n_layer=22,
        dim=2048,
        n_head=32,
        n_kv_head=4,
        intermediate_size=5632,
        vocab_size=32000,
        tie_embeddings=False,
        max_position=2048,
    ),
}


def model_args(spec: ModelSpec) -> ModelArgs:
    """The model's shape, read without loading any weights."""
    if spec.path:
        return args_from_hf_config(read_hf_config(Path(spec.path)))
    return ModelArgs.from_name(spec.preset)


def model_label(spec: ModelSpec) -> str:
    """How results name a model: its preset, or its directory's name."""
    return Path(spec.path).name if spec.path else spec.preset


def read_hf_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(
            f"{path}: no config.json (expected a Hugging Face format directory)"
        )
    data = json.loads(cfg.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{cfg}: expected a JSON object")
    return data


HF_REQUIRED = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


# Fields read below, and fields that do not change a forward pass; any other is refused by name.
HF_READ = set(HF_REQUIRED) | {
    "model_type",
    "num_key_value_heads",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rms_norm_eps",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "max_position_embeddings",
    "head_dim",
    "hidden_act",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    "is_encoder_decoder",
    "_name_or_path",
}
HF_HARMLESS = {
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
    "use_cache",
    "pretraining_tp",  # a training-time split of the same matmuls
    "attention_dropout",  # inference runs without dropout
    "tokenizer_class",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",  # classification heads' labels, unused by a causal LM
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",  # the same feed-forward, computed in chunks
}
ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _rope_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """RoPE theta and scaling from a transformers 4.x (``rope_theta`` + ``rope_scaling``) or 5.x
    (``rope_parameters``) config; ValueError for a scaling this engine does not implement."""
    params = dict(cfg.get("rope_scaling") or {})
    params.update(cfg.get("rope_parameters") or {})
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if kind not in ROPE_KEYS:
        raise ValueError(
            f"unsupported model config: RoPE scaling {kind!r} is not implemented "
            f"(implemented: {', '.join(ROPE_KEYS)})"
        )
    extra = sorted(set(params) - ROPE_KEYS[kind])
    if extra:
        raise ValueError(f"unsupported model config: RoPE {kind} field(s) {', '.join(extra)}")
    missing = sorted(ROPE_KEYS[kind] - set(params))
    if missing:
        raise ValueError(f"model config: RoPE {kind} needs {', '.join(missing)}")
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ValueError(f"model config: rope_theta must be a positive number, got {theta!r}")
    out: dict[str, Any] = {"rope_base": float(theta), "rope_type": kind}
    if kind != "default":
        out["rope_factor"] = float(params["factor"])
    if kind == "llama3":
        out["rope_low_freq_factor"] = float(params["low_freq_factor"])
        out["rope_high_freq_factor"] = float(params["high_freq_factor"])
        out["rope_original_max_position"] = int(params["original_max_position_embeddings"])
    return out


def args_from_hf_config(cfg: dict[str, Any]) -> ModelArgs:
    """A Hugging Face ``config.json`` (transformers 4.x or 5.x) as ModelArgs; ValueError names
    each field this engine does not implement."""
    model_type = cfg.get("model_type", "llama")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported model_type {model_type!r} (Llama-family only)")
    missing = [k for k in HF_REQUIRED if not isinstance(cfg.get(k), int) or cfg[k] < 1]
    if missing:
        raise ValueError(f"config.json needs positive integers for: {', '.join(missing)}")
    quant = cfg.get("quantization_config")
    if quant is not None and (
        not isinstance(quant, dict) or quant.get("quant_method") != INT8_QUANT_METHOD
    ):
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(
            f"unsupported model config: quantization {method!r} (this engine reads its own "
            f"{INT8_QUANT_METHOD!r} directories, or quantizes float weights with dtype int8)"
        )
    unknown = sorted(
        k
        for k in cfg
        if k not in HF_READ | HF_HARMLESS | {"quantization_config"} and cfg[k] is not None
    )
    if unknown:
        raise ValueError(
            f"unsupported model config: field(s) {', '.join(unknown)} not implemented by this "
            "engine (refused rather than ignored)"
        )
    n_head = cfg["num_attention_heads"]
    unsupported = []
    if cfg.get("mlp_bias"):
        unsupported.append("mlp_bias=true")
    if cfg.get("is_encoder_decoder"):
        unsupported.append("is_encoder_decoder=true")
    if any(t != "full_attention" for t in cfg.get("layer_types") or []):
        unsupported.append(f"layer_types={sorted(set(cfg['layer_types']))}")
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // n_head):
        unsupported.append(f"head_dim={cfg['head_dim']}")
    if cfg.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={cfg['hidden_act']}")
    if cfg.get("use_sliding_window") or (model_type == "mistral" and cfg.get("sliding_window")):
        unsupported.append(f"sliding_window={cfg.get('sliding_window')}")
    if unsupported:
        raise ValueError(f"unsupported model config: {', '.join(unsupported)}")
    rope = _rope_settings(cfg)
    return ModelArgs(
        name=cfg.get("_name_or_path") or model_type,
        n_layer=cfg["num_hidden_layers"],
        dim=cfg["hidden_size"],
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads", n_head),
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        **rope,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=int(cfg.get("max_position_embeddings", 2048)),
    )
