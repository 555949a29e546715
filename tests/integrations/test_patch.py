"""fastdiff.patch / unpatch on tiny random-weight models: same outputs and LoRA gradients as the
unpatched model (fp32, CPU), exact restoration, idempotence, and a report that says what it did."""

import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import fastdiff  # noqa: E402
from fastdiff.integrations.report import ALREADY, FOLDED, SWAPPED  # noqa: E402
from tests.integrations import timm_dit, tiny  # noqa: E402


def _r(*shape, g):
    return torch.randn(*shape, generator=g)


def inputs(name, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([10, 500])
    if name == "sd_unet":
        args, kw = (_r(2, 4, 8, 8, g=g), t, _r(2, 7, 32, g=g)), {}
    elif name == "sdxl_unet":
        args, kw = (_r(2, 4, 8, 8, g=g), t, _r(2, 7, 32, g=g)), {
            "added_cond_kwargs": {"text_embeds": _r(2, 32, g=g), "time_ids": _r(2, 6, g=g) * 100}}
    elif name == "controlnet":
        args, kw = (_r(2, 4, 8, 8, g=g), t, _r(2, 7, 32, g=g), _r(2, 3, 16, 16, g=g)), {}
    elif name == "dit":
        args, kw = (_r(2, 4, 8, 8, g=g),), {"timestep": t, "class_labels": torch.tensor([1, 1000])}
    elif name == "pixart":
        mask = torch.ones(2, 5)
        mask[0, 3:] = 0
        args, kw = (_r(2, 4, 8, 8, g=g),), {"encoder_hidden_states": _r(2, 5, 12, g=g), "encoder_attention_mask": mask,
                                            "timestep": t, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    elif name == "sd3":
        args, kw = (_r(2, 4, 8, 8, g=g),), {"encoder_hidden_states": _r(2, 5, 12, g=g),
                                            "pooled_projections": _r(2, 10, g=g), "timestep": t.float()}
    elif name == "vae":
        args, kw = (_r(1, 3, 16, 16, g=g),), {}
    elif name == "timm_dit":
        args, kw = (_r(2, 16, 8, g=g), _r(2, 32, g=g)), {}
    cast = (lambda a: a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a)
    return [cast(a) for a in args], {k: ({kk: cast(vv) for kk, vv in v.items()} if isinstance(v, dict) else cast(v))
                                     for k, v in kw.items()}


MODELS = {
    "sd_unet": tiny.sd_unet, "sdxl_unet": lambda: tiny.sd_unet(sdxl=True), "controlnet": tiny.controlnet,
    "dit": tiny.dit, "pixart": tiny.pixart, "sd3": tiny.sd3, "vae": tiny.vae,
    "timm_dit": lambda: tiny.randomise(timm_dit.DiT(qk_norm=True)),
}


def flat(out):
    """Every tensor in a model output, flattened into one vector."""
    if torch.is_tensor(out):
        return out.reshape(-1)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return torch.cat([flat(o) for o in out if o is not None])


def run(model, name, dtype=torch.float32):
    args, kw = inputs(name, dtype)
    return flat(model(*args, **kw))


def close(got, want, rtol):
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item(), f"max abs error {err:.3g}, max |ref| {want.abs().max().item():.3g}"


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request):
    """(name, unpatched model, patched copy, report)."""
    base = MODELS[request.param]()
    fast = copy.deepcopy(base)
    return request.param, base, fast, fastdiff.patch(fast)


def test_patched_model_gives_the_same_outputs(pair):
    name, base, fast, report = pair
    assert report.swapped, str(report)
    with torch.no_grad():
        close(run(fast, name), run(base, name), 1e-4)


def test_patch_is_idempotent_and_unpatch_restores_everything(pair):
    name, base, fast, report = pair
    again = fastdiff.patch(fast)
    assert again.count(SWAPPED) == 0 and again.count(ALREADY) == report.count(SWAPPED)
    state = {k: v.clone() for k, v in fast.state_dict().items()}
    assert state.keys() == base.state_dict().keys()  # patching adds and renames nothing
    processors = {n: m.__dict__["_fastdiff_patch"].get("processor") for n, m in fast.named_modules() if "_fastdiff_patch" in m.__dict__}
    assert fastdiff.unpatch(fast) == report.count(SWAPPED)
    modules = dict(fast.named_modules())
    for n, proc in processors.items():
        if proc is not None:
            assert modules[n].processor is proc  # the very object patch found
    assert not any("forward" in m.__dict__ or "_fastdiff_patch" in m.__dict__ for m in fast.modules())
    assert all(torch.equal(v, state[k]) for k, v in fast.state_dict().items())
    for a, b in zip(fast.modules(), base.modules()):
        if hasattr(a, "processor"):
            assert type(a.processor) is type(b.processor)
    with torch.no_grad():
        assert torch.equal(run(fast, name), run(base, name))
    fastdiff.patch(fast)  # patched again for the other tests of this module


def test_a_deep_copy_of_a_patched_model_is_patched_and_unpatches(pair):
    name, base, fast, _ = pair
    twin = copy.deepcopy(fast)
    with torch.no_grad():
        close(run(twin, name), run(base, name), 1e-4)
        fastdiff.unpatch(twin)
        assert not any("forward" in m.__dict__ for m in twin.modules())
        assert torch.equal(run(twin, name), run(base, name))


def test_float64_runs_through_the_references(pair):
    name, base, fast, _ = pair
    b64, f64 = copy.deepcopy(base).double(), copy.deepcopy(fast).double()
    with torch.no_grad():
        close(run(f64, name, torch.float64), run(b64, name, torch.float64), 1e-10)


LORA_TARGETS = {"sd_unet": ["to_q", "to_k", "to_v", "to_out.0"], "dit": ["to_q", "to_v", "linear"],
                "sd3": ["to_q", "add_k_proj", "to_out.0"], "timm_dit": ["qkv", "proj", "adaLN_modulation.1"],
                "pixart": ["to_q", "to_k", "proj"]}


@pytest.mark.parametrize("name", list(LORA_TARGETS))
def test_lora_training_step_gradients(name):
    """LoRA adapters inside a patched model stay separate layers and get the same gradients."""
    peft = pytest.importorskip("peft")
    base = MODELS[name]()
    torch.manual_seed(3)
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=LORA_TARGETS[name], init_lora_weights=False), base)
    fast = copy.deepcopy(base)
    report = fastdiff.patch(fast)
    assert report.swapped
    grads = []
    for model in (base, fast):
        model.train()
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        model.zero_grad()
        loss = run(model, name).square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        close(grads[1][n], grads[0][n], 1e-3)


def test_lora_loaded_after_patching():
    """diffusers' add_adapter after fastdiff.patch: the adapter runs (not folded) and unpatch keeps it."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    base = MODELS["sd_unet"]()
    ref, fast = copy.deepcopy(base), copy.deepcopy(base)
    fastdiff.patch(fast)
    cfg = LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    torch.manual_seed(5)
    ref.add_adapter(cfg)
    fast.add_adapter(cfg)
    fast.load_state_dict(ref.state_dict())
    with torch.no_grad():
        want = run(ref, "sd_unet")
        assert (want - run(base, "sd_unet")).abs().max() > 1e-3  # the adapter changes the output
        close(run(fast, "sd_unet"), want, 1e-4)
        fastdiff.unpatch(fast)
        close(run(fast, "sd_unet"), want, 1e-4)


def test_compile_fullgraph_of_a_patched_transformer():
    """No graph break in a patched DiT (fake kernels of the ops, the processor, the bound forwards)."""
    model = MODELS["dit"]()
    with torch.no_grad():
        want = run(model, "dit")
        fastdiff.patch(model)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        args, kw = inputs("dit")
        close(flat(compiled(*args, **kw)), want, 1e-4)


def test_report_table_and_what_is_left_alone():
    model = MODELS["vae"]()
    model.decoder.mid_block.attentions[0].set_processor(diffusers.models.attention_processor.AttnAddedKVProcessor())
    report = fastdiff.patch(model)
    text = str(report)
    assert "module" in text.splitlines()[0] and "fastdiff.patch:" in text.splitlines()[-1]
    left = report.left_alone
    assert "AttnAddedKVProcessor is not one fastdiff reproduces" in left["decoder.mid_block.attentions.0"]
    assert "encoder.mid_block.attentions.0" in report.swapped
    assert type(model.encoder.mid_block.attentions[0].processor).__name__ == "FastDiffAttnProcessor"


def test_a_hooked_forward_is_left_alone():
    model = timm_dit.DiT()
    block = model.blocks[0]
    block.forward = lambda x, c: x  # what accelerate's hooks do: an instance forward
    report = fastdiff.patch(model)
    assert "already has its own forward" in report.left_alone["blocks.0"]
    assert "blocks.1" in report.swapped
    fastdiff.unpatch(model)
    assert "forward" in block.__dict__  # the hook is not ours to remove


def test_folded_children_are_reported():
    report = fastdiff.patch(MODELS["sd3"]())
    rows = {e.path: e for e in report}
    assert rows["transformer_blocks.0.norm1"].status == FOLDED
    assert rows["norm_out"].status == SWAPPED
    assert "FastDiffJointAttnProcessor" in rows["transformer_blocks.0.attn"].detail


def test_accelerate_and_unaccelerate(tmp_path):
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=tiny.vae(), text_encoder=None, tokenizer=None, unet=tiny.sd_unet(), controlnet=tiny.controlnet(),
        scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sched = pipe.scheduler
    report = fastdiff.accelerate(pipe)
    paths = report.swapped
    assert any(p.startswith("unet.") for p in paths) and any(p.startswith("controlnet.") for p in paths)
    assert any(p.startswith("vae.") for p in paths) and "scheduler" in paths
    assert type(pipe.scheduler).__module__.startswith("fastdiff.") and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert fastdiff.accelerate(pipe).count(SWAPPED) == 1  # only the scheduler row repeats; models already patched
    fastdiff.unaccelerate(pipe)
    assert pipe.scheduler is sched
    assert not any("_fastdiff_patch" in m.__dict__ for m in pipe.unet.modules())
    with pytest.raises(TypeError, match="diffusers pipeline"):
        fastdiff.accelerate(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["sd_unet", "vae"])
def test_group_norm_and_geglu_rules_compute_the_block(name):
    """The ResnetBlock2D and GEGLU forwards the rules install compute what diffusers' do."""
    base = MODELS[name]()
    fast = copy.deepcopy(base)
    report = fastdiff.patch(fast)
    kinds = {e.kind for e in report if e.status == SWAPPED}
    assert "ResnetBlock2D" in kinds and (name == "vae" or "GEGLU" in kinds), str(report)
    with torch.no_grad():
        close(run(fast, name), run(base, name), 1e-4)


@pytest.mark.parametrize("norm_type,affine", [("rms_norm", True), ("layer_norm", True), ("rms_norm", False)])
def test_ada_layer_norm_continuous_with_rms_or_layer_norm(norm_type, affine):
    from diffusers.models.normalization import AdaLayerNormContinuous

    base = tiny.randomise(AdaLayerNormContinuous(16, 12, elementwise_affine=affine, eps=1e-5, norm_type=norm_type))
    fast = copy.deepcopy(base)
    assert fastdiff.patch(fast).swapped == [""]
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 5, 16, generator=g), torch.randn(2, 12, generator=g)
    with torch.no_grad():
        close(fast(x, cond), base(x, cond), 1e-5)
