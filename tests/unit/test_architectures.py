"""The training path on the architectures teams fine-tune, not only the project's tiny Llama.

For each of Llama (3), Mistral, Qwen2, Gemma, Phi-3 and GPT-2, a tiny random-weight model is built
from config with its family's chat template and tokenizer conventions (`flywheel.sim.architectures`;
nothing is downloaded), then: train -> save -> reload with `PeftModel.from_pretrained` in a fresh
process -> the greedy answers reproduce -> the merged export loads and answers without peft.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.config import TrainingConfig
from flywheel.errors import TrainingError
from flywheel.sim.architectures import FAMILIES, build_random_model

ATTENTION_LAYERS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "gemma": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "phi3": {"qkv_proj", "o_proj"},  # fused projections
    # Conv1D layers; `c_proj` is also the MLP's output, so the attention's are named in full.
    "gpt2": {"c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"},
}

MODEL_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "gemma": "GemmaForCausalLM", "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel"}  # fmt: skip

RELOAD = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from flywheel.model.training import greedy_token_ids

base, adapter, merged = sys.argv[1:4]
probes = json.load(open(adapter + "/flywheel_training.json"))["probes"]
tok = AutoTokenizer.from_pretrained(adapter)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
reloaded = greedy_token_ids(model, tok, probes["prompts"])
enc = tok.apply_chat_template([{"role": "user", "content": probes["prompts"][0]}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
with torch.inference_mode():
    adapter_logits = model(**enc).logits
model.merge_and_unload().save_pretrained(merged)
tok.save_pretrained(merged)
print("OUT=" + json.dumps({"reloaded": reloaded, "logits": adapter_logits[0, -1].tolist()}))
"""

PLAIN = """
import json, sys
sys.modules["peft"] = None  # as if peft were not installed: importing it fails, transformers finds none
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
merged, prompt = sys.argv[1:3]
model, tok = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
with torch.inference_mode():
    logits = model(**enc).logits
names = [n for n, _ in model.named_parameters()]
print("OUT=" + json.dumps({"class": type(model).__name__, "logits": logits[0, -1].tolist(),
                           "lora": [n for n in names if "lora" in n]}))
"""


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("OUT="))[4:])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, answer_fns) -> Path:
    from flywheel.data.dataset import build_chat_dataset
    from flywheel.records import candidate_from_row
    from flywheel.sim.traffic import simulate_traffic

    logs = simulate_traffic(
        datetime(2026, 1, 5, tzinfo=UTC), answer_fns["right"], model_version="base", n_requests=48, seed=3,
        malformed_rate=0.0, adversarial_rate=0.0,
    ).to_pylist()  # fmt: skip
    path = tmp_path_factory.mktemp("arch") / "dataset"
    build_chat_dataset([candidate_from_row(r) for r in logs], path, val_fraction=0.2)
    return path


def _config(**update) -> TrainingConfig:
    # A high learning rate: the adapter must move the random model's answers visibly in 6 steps.
    return TrainingConfig(epochs=1, batch_size=8, learning_rate=5e-2, lora_r=4, lora_alpha=8, **update)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_save_reload_and_merge(family, dataset, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from flywheel.model.training import train_lora

    base = build_random_model(family, tmp_path / "base")
    base_tok = AutoTokenizer.from_pretrained(base)
    assert base_tok.chat_template == FAMILIES[family].chat_template
    assert (base_tok.pad_token is None) == (FAMILIES[family].pad is None)

    adapter = tmp_path / "adapter"
    result = train_lora(base_model=str(base), dataset_path=dataset, output_dir=adapter, config=_config())
    assert result.steps == 5 and result.train_loss > 0

    # The layers adapted were found in the model: its attention's linear layers, whatever their names.
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == ATTENTION_LAYERS[family]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)  # it learnt
    # A family without a pad token pads with its end-of-sequence token (masked out of the loss).
    saved_tok = AutoTokenizer.from_pretrained(adapter)
    assert saved_tok.pad_token_id is not None and saved_tok.chat_template == base_tok.chat_template
    if FAMILIES[family].pad is None:
        assert saved_tok.pad_token_id == saved_tok.eos_token_id

    probes = json.loads((adapter / "flywheel_training.json").read_text())["probes"]
    merged = tmp_path / "merged"
    fresh = _run(RELOAD, str(base), str(adapter), str(merged))
    assert fresh["reloaded"] == probes["greedy_token_ids"] and len(fresh["reloaded"]) == 8

    assert not (merged / "adapter_config.json").exists()
    # One family's merged export is loaded where peft cannot be imported at all (a fresh
    # process, as a serving engine without LoRA support would); the others in this process.
    plain = _run(PLAIN, str(merged), probes["prompts"][0]) if family == "gpt2" else _plain(merged, probes["prompts"][0])
    assert plain["lora"] == [] and plain["class"] == MODEL_CLASS[family]
    import torch

    assert torch.allclose(torch.tensor(plain["logits"]), torch.tensor(fresh["logits"]), atol=1e-4)


def _plain(merged: Path, prompt: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        logits = model(**enc).logits
    lora = [n for n, _ in model.named_parameters() if "lora" in n]
    return {"class": type(model).__name__, "logits": logits[0, -1].tolist(), "lora": lora}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_loss_covers_the_answer_and_its_end_of_turn_only(family, tmp_path):
    """Each family's template (default system turn, `model` role, turn markers) leaves the
    answer and the token that ends it, nothing of the prompt, in the labels."""
    from transformers import AutoTokenizer

    from flywheel.model.architecture import prepare_tokenizer
    from flywheel.model.training import tokenize_chat

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(build_random_model(family, tmp_path / "m")), family)
    messages = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    out = tokenize_chat({"messages": messages}, tok, max_length=128)
    learnt = tok.decode([t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != -100])
    assert learnt.strip().startswith("Paris") and "France" not in learnt
    ends = {FAMILIES[family].eos, *FAMILIES[family].end_of_turn}
    assert any(end in learnt for end in ends), learnt


def test_answers_stop_at_the_familys_end_of_turn(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.model.architecture import stop_token_ids

    path = build_random_model("gemma", tmp_path / "gemma")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    assert stop_token_ids(model, tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]


def test_a_model_without_a_chat_template_is_a_clear_error(dataset, tmp_path):
    from flywheel.model.training import train_lora

    base = build_random_model("gpt2", tmp_path / "gpt2", chat_template=False)
    with pytest.raises(TrainingError, match="has no chat template.*save a chat template"):
        train_lora(base_model=str(base), dataset_path=dataset, output_dir=tmp_path / "a", config=_config())
    assert not (tmp_path / "a").exists()


def test_layer_names_of_another_family_are_a_clear_error(dataset, tmp_path):
    from flywheel.model.training import train_lora

    base = build_random_model("phi3", tmp_path / "phi3")
    llama_list = _config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with pytest.raises(TrainingError, match=r"\['q_proj', 'k_proj', 'v_proj'\] name no linear layer.*qkv_proj"):
        train_lora(base_model=str(base), dataset_path=dataset, output_dir=tmp_path / "a", config=llama_list)


def test_all_linear_adapts_every_linear_layer_but_the_head(tmp_path):
    from transformers import AutoModelForCausalLM

    from flywheel.model.architecture import linear_layer_names, lora_target_modules

    model = AutoModelForCausalLM.from_pretrained(build_random_model("gpt2", tmp_path / "gpt2"))
    assert lora_target_modules(model, "all-linear") == "all-linear"
    assert {n.rsplit(".", 1)[-1] for n in linear_layer_names(model)} >= {"c_attn", "c_proj", "c_fc"}
    with pytest.raises(TrainingError, match="neither"):
        lora_target_modules(model, "mlp")


def test_target_modules_as_a_run_param_takes_a_keyword():
    assert TrainingConfig(target_modules=["all-linear"]).target_modules == "all-linear"
    assert TrainingConfig(target_modules=["q_proj"]).target_modules == ["q_proj"]
    with pytest.raises(ValueError, match="adapts nothing"):
        TrainingConfig(target_modules=[])


def test_precision_is_float32_on_a_cpu_and_half_on_a_gpu():
    import torch

    from flywheel.model.architecture import compute_dtype

    for precision in ("auto", "float32", "bfloat16", "float16"):
        assert compute_dtype(precision, cuda=False) is torch.float32
    assert compute_dtype("auto", cuda=True, bf16=True) is torch.bfloat16
    assert compute_dtype("auto", cuda=True, bf16=False) is torch.float16
    assert compute_dtype("float16", cuda=True, bf16=True) is torch.float16
    assert compute_dtype("float32", cuda=True, bf16=True) is torch.float32


def test_gradient_checkpointing_trains_the_same_adapter(dataset, tmp_path):
    """Recomputing activations saves memory; it must not change what is learnt."""
    from safetensors.torch import load_file

    from flywheel.model.training import train_lora

    base = str(build_random_model("llama", tmp_path / "llama"))
    plain = train_lora(base_model=base, dataset_path=dataset, output_dir=tmp_path / "a", config=_config())
    ckpt = train_lora(base_model=base, dataset_path=dataset, output_dir=tmp_path / "b",
                      config=_config(gradient_checkpointing=True))  # fmt: skip
    assert abs(plain.train_loss - ckpt.train_loss) < 1e-5
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    import torch

    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_4bit_base_weights_without_a_gpu_are_a_clear_error(dataset, tmp_path):
    import torch

    from flywheel.model.training import train_lora

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: scripts/gpu_check.sh covers 4-bit training")
    base = str(build_random_model("llama", tmp_path / "llama"))
    with pytest.raises(TrainingError, match="load_in_4bit needs a CUDA GPU"):
        train_lora(base_model=base, dataset_path=dataset, output_dir=tmp_path / "a", config=_config(load_in_4bit=True))
