"""WiSE-FT: weight-space ensembling of a fine-tuned model with its base (Wortsman et al., 2022).

theta = alpha * theta_finetuned + (1 - alpha) * theta_base, for every floating-point tensor; alpha = 1 is
the fine-tuned model, alpha = 0 the base. Any architecture whose fine-tuned and base state dicts have the
same keys and shapes (every full fine-tune of a sentence-transformers model), so it carries to e5 models
unchanged; prompts and settings stay those of the fine-tuned model. The training recipe mixes before
export when train.wise_alpha < 1; the quality benchmark chooses alpha on its dev probes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts import TRAINING_INFO


def interpolate_state(base_state: dict, tuned_state: dict, alpha: float) -> dict:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT mixing weight must be in [0, 1], got {alpha}")
    differ = set(tuned_state) ^ set(base_state)
    if differ:
        raise ValueError(f"base and fine-tuned models differ in parameters: {sorted(differ)[:5]}")
    out = {}
    for name, tuned in tuned_state.items():
        base = base_state[name]
        if tuned.shape != base.shape:
            raise ValueError(f"{name}: shape {tuple(tuned.shape)} vs base {tuple(base.shape)}")
        if tuned.is_floating_point():
            if alpha == 1.0:
                out[name] = tuned.clone()
            elif alpha == 0.0:
                out[name] = base.to(device=tuned.device, dtype=tuned.dtype).clone()
            else:
                out[name] = (alpha * tuned.float() + (1 - alpha) * base.float().to(tuned.device)).to(tuned.dtype)
        else:
            out[name] = tuned.clone()
    return out


def mix_into(model, base_state: dict, alpha: float) -> None:
    """Replace `model`'s weights in place by the mix with `base_state` (a state dict on any device)."""
    tuned = {k: v.detach() for k, v in model.state_dict().items()}
    model.load_state_dict(interpolate_state(base_state, tuned, alpha))


def base_state_of(base_ref: str, device: str = "cpu") -> dict:
    from ..models import load_model

    base = load_model(base_ref, device=device)
    return {k: v.detach().clone() for k, v in base.state_dict().items()}


def mix_folder(base_ref: str, tuned_dir: Path, out_dir: Path, alpha: float, base_state: dict | None = None) -> Path:
    """Write the mixed model to `out_dir` (a copy of the fine-tuned folder with mixed weights and the
    mixing weight recorded in training_info.json)."""
    from ..models import load_model

    tuned_dir, out_dir = Path(tuned_dir), Path(out_dir)
    model = load_model(str(tuned_dir), device="cpu")
    mix_into(model, base_state if base_state is not None else base_state_of(base_ref), alpha)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save(str(out_dir))
    info_path = tuned_dir / TRAINING_INFO
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["wise_alpha"] = alpha
        (out_dir / TRAINING_INFO).write_text(json.dumps(info, indent=2))
    return out_dir
