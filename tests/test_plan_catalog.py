"""The model catalog, hardware profiles, model references, and the planner's no-torch rule."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.errors import TunesmithError
from tunesmith.plan.catalog import Catalog, load_catalog, model_config
from tunesmith.plan.estimate import UnsupportedModel, model_shape
from tunesmith.plan.hardware import PROFILES, Hardware, cpu_profile, get_hardware

REQUIRED_IDS = [
    "ProsusAI/finbert",
    "FacebookAI/roberta-base",
    "FacebookAI/roberta-large",
    "facebook/bart-large",
    "facebook/bart-large-cnn",
    "google-t5/t5-small",
    "csebuetnlp/mT5_multilingual_XLSum",
    "Falconsai/medical_summarization",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "mistralai/Mistral-7B-v0.1",
    "microsoft/bitnet-b1.58-2B-4T",
    "databricks/dbrx-base",
    "google/vit-base-patch16-224",
    "microsoft/resnet-50",
    "nvidia/segformer-b5-finetuned-ade-640-640",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "ByteDance/SDXL-Lightning",
    "h94/IP-Adapter-FaceID",
    "BAAI/bge-reranker-base",
    "openlm-research/open_llama_7b",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-360M-Instruct",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "microsoft/Phi-3.5-mini-instruct",
    "google/gemma-2-2b-it",
    "microsoft/deberta-v3-base",
    "google-bert/bert-base-uncased",
    "sentence-transformers/all-MiniLM-L6-v2",
    "timm/efficientnet_lite0.ra_in1k",
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_catalog_has_40_complete_entries_and_every_required_model(catalog):
    assert len(catalog.models) >= 40
    ids = {e.id for e in catalog.models}
    assert not [i for i in REQUIRED_IDS if i not in ids]
    for entry in catalog.models:
        for name in ("architecture", "domain", "license", "pretraining_data", "notes", "name", "source"):
            assert getattr(entry, name).strip(), (entry.id, name)
        assert entry.tasks and entry.metrics and entry.parameters > 0 and entry.context_length > 0
        assert isinstance(entry.fine_tuning_docs, bool)
        text_model = any(t not in ("image-classification", "image-segmentation") for t in entry.tasks)
        assert bool(entry.languages) == text_model, entry.id
        assert entry.config["model_type"]
    assert {k for e in catalog.models for k in e.tasks} == set(catalog.tasks)


def test_estimator_counts_match_published_parameter_counts(catalog):
    """The config blocks are the real ones: the shapes built from them give the published sizes."""
    unsupported = set()
    for entry in catalog.models:
        try:
            shape = model_shape(entry.config)
        except UnsupportedModel:
            unsupported.add(entry.config["model_type"])
            continue
        assert abs(shape.parameters / entry.parameters - 1) < 0.005, (entry.id, shape.parameters)
    assert unsupported == {"segformer", "unet", "ip-adapter"}


def test_well_known_parameter_counts(catalog):
    # Published counts (model cards / torchvision / PEFT print-outs), independent of the catalog text.
    known = {
        "llama-2-7b": 6_738_415_616,
        "bert-base-uncased": 109_482_240,
        "roberta-base": 124_645_632,
        "t5-small": 60_506_624,
        "vit-base": 86_567_656,
        "resnet-50": 25_557_032,
        "mt5-xlsum": 582_401_280,
    }
    for name, count in known.items():
        assert model_shape(catalog.get(name).config).parameters == count, name


def test_lookup_by_id_or_name_case_insensitively(catalog):
    assert catalog.get("LLAMA-2-7B").id == "meta-llama/Llama-2-7b-hf"
    assert catalog.get("meta-llama/llama-2-7b-hf").name == "llama-2-7b"
    assert catalog.get(" FinBERT ").id == "ProsusAI/finbert"


def test_unknown_model_lists_closest_names(catalog):
    with pytest.raises(TunesmithError, match="closest: .*llama-2-7b"):
        catalog.get("llama2-7b")
    with pytest.raises(TunesmithError, match="llama-2-7b"):
        model_config("lama-2-7")


def test_licences_and_tasks_are_validated(tmp_path):
    good = {
        "tasks": {"chat": "x"},
        "licenses": {"mit": {"kind": "permissive", "note": "n"}},
        "models": [
            {
                "id": "a/b",
                "name": "b",
                "tasks": ["chat"],
                "architecture": "x",
                "parameters": 1,
                "context_length": 1,
                "languages": ["en"],
                "domain": "general",
                "license": "mit",
                "pretraining_data": "x",
                "source": "official",
                "fine_tuning_docs": True,
                "notes": "x",
                "metrics": ["m"],
                "config": {"model_type": "llama"},
            }
        ],
    }

    def load(data) -> None:
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(data))
        load_catalog(path)

    load(good)
    for field, value, message in (
        ("tasks", ["summarise"], "unknown task"),
        ("license", "gpl", "licence"),
        ("colour", "red", "colour"),
        ("source", "blog", "source"),
    ):
        bad = json.loads(json.dumps(good))
        bad["models"][0][field] = value
        with pytest.raises(TunesmithError, match=message):
            load(bad)


def test_hardware_profiles_and_aliases():
    for name in (
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H200-141GB",
        "L4-24GB",
        "A10G-24GB",
        "V100-16GB",
        "V100-32GB",
        "T4-16GB",
        "RTX4090-24GB",
        "M2-Max-96GB",
        "M3-Max-128GB",
    ):
        hw = PROFILES[name]
        assert hw.memory_bytes > 10 * 2**30 and hw.bf16_tflops > 0 and hw.fp32_tflops > 0 and hw.bandwidth_gbs
    assert get_hardware("t4").name == "T4-16GB"
    assert get_hardware("H100").name == "H100-80GB"
    assert not get_hardware("T4").bf16 and get_hardware("L4").bf16
    assert get_hardware("a100-40gb").price_per_hour > 0


def test_unknown_hardware_lists_closest():
    with pytest.raises(TunesmithError, match="closest: .*A100"):
        get_hardware("A100-60GB")


def test_cpu_profile_reads_this_machine():
    cpu = cpu_profile()
    assert cpu.kind == "cpu" and cpu.memory_bytes > 2**30 and cpu.bf16_tflops >= cpu.fp32_tflops > 0
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu.bf16 == ("avx512_bf16" in flags or "amx_bf16" in flags)
    if shutil.which("nvidia-smi") is None:
        assert get_hardware("auto") is cpu


def test_model_config_from_folder_file_dict_and_offline_hub(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    config = {"model_type": "llama", "hidden_size": 64}
    (folder / "config.json").write_text(json.dumps(config))
    assert model_config(str(folder)) == ("my-model", config, None)
    assert model_config(str(folder / "config.json"))[1] == config
    assert model_config(config)[1] == config
    assert model_config("all-minilm-l6-v2")[2].id == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(TunesmithError, match="no config.json"):
        model_config(str(tmp_path))
    os.environ["HF_HUB_OFFLINE"] = "1"  # conftest sets it too; the hub is unreachable here anyway
    with pytest.raises(TunesmithError, match="tried the catalog.*local paths.*hub") as info:
        model_config("some-org/not-in-the-catalog")
    assert "huggingface-cli download some-org/not-in-the-catalog" in info.value.fix


def test_planner_never_imports_torch_transformers_or_peft():
    code = (
        "import sys\n"
        "import tunesmith.plan, tunesmith.plan.cli\n"
        "from tunesmith.plan import estimate, recommend\n"
        "estimate('llama-2-7b', method='qlora', hardware='T4')\n"
        "recommend('chat', hardware='L4', data_path='examples/data/support_tickets.jsonl')\n"
        "recommend('text-to-image', hardware='A100-80GB')\n"
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_custom_hardware_objects_pass_through():
    hw = Hardware("tiny", "consumer-gpu", 2**30, 10, 5, True, 100, 0.1)
    assert get_hardware(hw) is hw and hw.is_gpu
