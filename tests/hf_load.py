"""Loads rotadam checkpoint directories with Hugging Face `transformers`, as a user would, and writes the
log-probabilities of the next token that the loaded models compute, for the Rust test
`checkpoint::transformers_loads_a_checkpoint_with_the_same_logits` to compare with rotadam's own.

    python3 tests/hf_load.py --probe          prints the frameworks it can use: "flax", "torch", both or none
    python3 tests/hf_load.py REQUEST.json     REQUEST: {"out": PATH, "checks": [{"dir": DIR, "tokens": [[id, ...], ...]}]}

Each check loads DIR with `from_pretrained(DIR)` and nothing else: the weights must load in the dtype that
DIR's config.json names (`torch_dtype`), with no tensor missing, unexpected or newly initialised (any such
warning from `transformers` fails the script). The output maps each framework to one entry per check:
{"dtype": the parameters' dtype, "log_probs": [sequence][position][token]}.
"""

import json
import logging
import sys


def frameworks():
    found = []
    try:
        import transformers  # noqa: F401
    except Exception:
        return found
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        from transformers import FlaxGPT2LMHeadModel  # noqa: F401

        found.append("flax")
    except Exception:
        pass
    try:
        import torch  # noqa: F401
        from transformers import GPT2LMHeadModel  # noqa: F401

        found.append("torch")
    except Exception:
        pass
    return found


class Complaints(logging.Handler):
    """Collects the warnings of `transformers` that mean a weight was not loaded from the file."""

    MARKERS = ("newly initialized", "not initialized", "were not used", "not used when", "mismatched")

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        msg = record.getMessage()
        if any(m in msg for m in self.MARKERS):
            self.seen.append(msg)


def stored_dtype(d):
    with open(f"{d}/config.json") as f:
        return json.load(f)["torch_dtype"]


def run_flax(checks):
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 weights stay float64
    import jax.numpy as jnp
    from transformers import FlaxGPT2LMHeadModel

    out = []
    for c in checks:
        want = stored_dtype(c["dir"])
        model = FlaxGPT2LMHeadModel.from_pretrained(c["dir"], dtype=getattr(jnp, want))
        dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(model.params)}
        if dtypes != {want}:
            sys.exit(f"flax: {c['dir']}: parameters are {sorted(dtypes)}, config.json says {want}")
        logits = model(jnp.asarray(c["tokens"], dtype=jnp.int32)).logits
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float64), axis=-1)
        out.append({"dtype": want, "log_probs": jax.device_get(log_probs).tolist()})
    return out


def run_torch(checks):
    import torch
    from transformers import GPT2LMHeadModel

    out = []
    for c in checks:
        want = stored_dtype(c["dir"])
        model, info = GPT2LMHeadModel.from_pretrained(c["dir"], torch_dtype="auto", output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            sys.exit(f"torch: {c['dir']}: loading info {bad}")
        dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters()}
        if dtypes != {want}:
            sys.exit(f"torch: {c['dir']}: parameters are {sorted(dtypes)}, config.json says {want}")
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor(c["tokens"], dtype=torch.long)).logits
        log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
        out.append({"dtype": want, "log_probs": log_probs.tolist()})
    return out


def main():
    if sys.argv[1:] == ["--probe"]:
        print(" ".join(frameworks()))
        return
    with open(sys.argv[1]) as f:
        req = json.load(f)
    complaints = Complaints()
    logging.getLogger("transformers").addHandler(complaints)
    result = {}
    for name in frameworks():
        result[name] = {"flax": run_flax, "torch": run_torch}[name](req["checks"])
    if complaints.seen:
        sys.exit("transformers did not load every weight from the file:\n" + "\n".join(complaints.seen))
    with open(req["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
