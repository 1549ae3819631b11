"""LoRA: low-rank adapters on frozen weights (Hu et al. 2021, arXiv 2106.09685), with rsLoRA scaling
(Kalajdzievski 2023, arXiv 2312.03732). Derivations: derivations/lora.md.

    linear.py   the op and its math: lora_linear_forward/backward, init, scale, merge/unmerge, subspace similarity
    adapt.py    adapting a model by weight name: LoRAConfig, LoRALinear overrides, adapter files, merging

Every public name of both modules is importable from ``scratch_transformers.lora``.
"""

from .adapt import (DEFAULT_TARGETS, LoRAConfig, LoRALinear, adapted_names, adapter_keys, adapter_loss_and_grads,
                    apply_adapters, bias_name, find_targets, init_adapters, load_adapters, make_linears,
                    merge_adapters, n_params, save_adapters, unmerge_adapters)
from .linear import (INITS, LoRACache, delta_weight, init_lora, lora_linear_backward, lora_linear_forward,
                     lora_scale, merge, subspace_similarity, unmerge)

__all__ = [
    "DEFAULT_TARGETS", "INITS", "LoRACache", "LoRAConfig", "LoRALinear", "adapted_names", "adapter_keys",
    "adapter_loss_and_grads", "apply_adapters", "bias_name", "delta_weight", "find_targets", "init_adapters",
    "init_lora", "load_adapters", "lora_linear_backward", "lora_linear_forward", "lora_scale", "make_linears",
    "merge", "merge_adapters", "n_params", "save_adapters", "subspace_similarity", "unmerge", "unmerge_adapters",
]
